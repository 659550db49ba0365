//! Which of a lead's fields the engine keeps: only those something reads. Vendors send dozens of
//! fields, long text among them; a lead's state holds the few its rules name, those the engine
//! itself reads, and those alerts show. The raw topic still holds every payload, so nothing is
//! lost: a field the rules start reading after a reload comes with the lead's next event that
//! carries it, or from `leadwatch replay`.
//!
//! Decided once per rules ([`Projection::of`], kept as [`Rules::kept_fields`]) and applied to
//! each patch before it enters a lead's state, to states read back from the changelog (which may
//! hold every field, written by an older version) and to every lead on a rules reload.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::fields::Name;
use super::rules::{Predicate, Rules};
use super::state::{Fields, Lead, LeadState, Patch};
use crate::event::Change;

/// The fields the engine itself reads, whatever the rules say: the owner (clocks, recipients,
/// the scorecard's owners), the close-out reason and detail (`[disposition]`), and what alerts
/// show of the lead (`lead_info`: name, else first and last name; email; company). Templates see
/// only the alert, so they read no other field.
pub const ENGINE_FIELDS: [&str; 8] = [
    "owner",
    "disposition_reason",
    "disposition_detail",
    "name",
    "first_name",
    "last_name",
    "email",
    "company",
];

/// Which fields a lead keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projection {
    /// Every field: a rule reads `lead` (or `change`) as a whole, or a reference run.
    All,
    /// Only these.
    Only(Arc<Kept>),
}

/// The fields a projection keeps, and the one copy of each name that every lead's fields share.
#[derive(Debug, PartialEq, Eq)]
pub struct Kept {
    /// The names (sorted).
    set: BTreeSet<String>,
    /// The same names, shared: what a lead's fields, field times and patches point at.
    names: Box<[Name]>,
    /// A bit per [`Kept::shape`] of each name: most of a vendor's fields (dozens per event) are
    /// not kept, and this tells most of them so without a search among the names.
    shapes: [u64; 4],
}

impl Kept {
    fn new(set: BTreeSet<String>) -> Self {
        let names: Box<[Name]> = set.iter().map(|n| Name::from(n.as_str())).collect();
        let mut shapes = [0; 4];
        for name in &names {
            let shape = Self::shape(name);
            shapes[shape / 64] |= 1 << (shape % 64);
        }
        Self { set, names, shapes }
    }

    /// One of 256 shapes of a name, from its length and its first and last bytes.
    fn shape(name: &str) -> usize {
        let bytes = name.as_bytes();
        let (first, last) = (bytes.first().copied(), bytes.last().copied());
        let mixed = (bytes.len() as u32).wrapping_mul(0x9e37)
            ^ u32::from(first.unwrap_or(0)).wrapping_mul(0x85eb)
            ^ u32::from(last.unwrap_or(0)).wrapping_mul(0xc2b3);
        ((mixed ^ (mixed >> 8)) & 0xff) as usize
    }

    fn name(&self, field: &str) -> Option<&Name> {
        let shape = Self::shape(field);
        if self.shapes[shape / 64] & (1 << (shape % 64)) == 0 {
            return None;
        }
        self.names
            .binary_search_by(|n| (**n).cmp(field))
            .ok()
            .map(|i| &self.names[i])
    }
}

impl Projection {
    /// What the rules read (every predicate: the lifecycle, `touch_counts`, segments' `when`)
    /// and what the engine reads ([`ENGINE_FIELDS`]).
    pub fn of(rules: &Rules) -> Projection {
        let l = &rules.lifecycle;
        let predicates = [
            Some(&l.sales_ready),
            l.closed.as_ref(),
            l.converted.as_ref(),
            l.touch.as_ref(),
            rules.touch_counts.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(rules.segments.iter().map(|s| &s.when));
        Self::reading(predicates)
    }

    /// What these predicates and the engine read.
    pub fn reading<'p>(predicates: impl IntoIterator<Item = &'p Predicate>) -> Projection {
        let mut kept: BTreeSet<String> = ENGINE_FIELDS.iter().map(|f| f.to_string()).collect();
        for p in predicates {
            match p.reads() {
                Some(fields) => kept.extend(fields.iter().cloned()),
                None => return Projection::All,
            }
        }
        Projection::Only(Arc::new(Kept::new(kept)))
    }

    /// Whether a field of this name is kept.
    pub fn keeps(&self, field: &str) -> bool {
        match self {
            Projection::All => true,
            Projection::Only(kept) => kept.set.contains(field),
        }
    }

    /// The name of a field kept, shared (a copy of its own when every field is kept); `None`
    /// when it is not kept.
    pub fn name(&self, field: &str) -> Option<Name> {
        match self {
            Projection::All => Some(Name::from(field)),
            Projection::Only(kept) => kept.name(field).cloned(),
        }
    }

    /// Whether a field of this name is kept; if so, points `name` at the shared copy of it (a
    /// state read back, or kept under other rules, has names of its own).
    pub fn intern(&self, name: &mut Name) -> bool {
        match self {
            Projection::All => true,
            Projection::Only(kept) => match kept.name(name) {
                Some(shared) => {
                    if !Arc::ptr_eq(shared, name) {
                        *name = shared.clone();
                    }
                    true
                }
                None => false,
            },
        }
    }

    /// The fields kept; `None` for every field.
    pub fn fields(&self) -> Option<&BTreeSet<String>> {
        match self {
            Projection::All => None,
            Projection::Only(kept) => Some(&kept.set),
        }
    }

    /// An event's change as the reorder window keeps it: a patch's kept fields.
    pub fn logged(&self, change: &Change) -> Patch {
        match change {
            Change::Updated { fields } => {
                // Room for what can be kept at most: one allocation, at most one shrink.
                let most = match self {
                    Projection::All => fields.len(),
                    Projection::Only(kept) => fields.len().min(kept.names.len()),
                };
                let mut named = Vec::with_capacity(most);
                named.extend(
                    fields
                        .iter()
                        .filter_map(|(k, v)| Some((self.name(k)?, v.clone()))),
                );
                Patch::Updated(Fields::from_named(named))
            }
            other => Patch::Other(Box::new(other.clone())),
        }
    }

    /// Drops from a lead's state every field not kept (the lead, its base and the patches of its
    /// reorder window), and points the names of those kept at their shared copies.
    pub fn state(&self, state: &mut LeadState) {
        if matches!(self, Projection::All) {
            return;
        }
        self.lead(&mut state.lead);
        if let Some(base) = state.base.as_deref_mut() {
            self.lead(base);
        }
        for entry in &mut state.log {
            if let Patch::Updated(fields) = &mut entry.change {
                fields.keep(|k| self.intern(k));
            }
        }
    }

    fn lead(&self, lead: &mut Lead) {
        lead.fields.keep(|k| self.intern(k));
    }

    /// The fields this projection keeps that `before` dropped: after a rules reload, leads lack
    /// them until their next event carries them (or a replay). `["*"]` when it keeps every field
    /// and `before` did not.
    pub fn missing_after(&self, before: &Projection) -> Vec<String> {
        match (before, self) {
            (Projection::All, _) => Vec::new(),
            (Projection::Only(_), Projection::All) => vec!["*".to_string()],
            (Projection::Only(old), Projection::Only(new)) => {
                new.set.difference(&old.set).cloned().collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rules::Cel;

    fn kept(rules: &str) -> Vec<String> {
        let rules = Rules::parse(rules).unwrap();
        let fields = rules
            .kept_fields()
            .fields()
            .expect("a field set, not every field");
        fields.iter().cloned().collect()
    }

    /// What the engine and alerts read, and then what each rules file's predicates name.
    fn expected(read: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ENGINE_FIELDS
            .iter()
            .chain(read)
            .map(|f| f.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_shipped_rules_keep_what_they_read_and_what_alerts_show() {
        assert_eq!(
            kept(include_str!("../../config/rules.toml")),
            expected(&["stage", "score", "status", "employees", "region"])
        );
        assert_eq!(
            kept(include_str!("../../config/examples/hubspot.rules.toml")),
            expected(&["stage", "status"])
        );
        assert_eq!(
            kept(include_str!("../../config/examples/salesforce.rules.toml")),
            expected(&["status"])
        );
    }

    fn reads(expr: &str) -> Option<Vec<String>> {
        let p = Predicate::compile(&Cel::default(), "t", expr).unwrap();
        p.reads().map(<[String]>::to_vec)
    }

    #[test]
    fn every_way_of_naming_a_field_is_seen_and_reading_lead_whole_keeps_everything() {
        let named = [
            ("lead.stage == \"MQL\"", vec!["stage"]),
            ("has(lead.score) && lead.score > 1", vec!["score"]),
            ("lead[\"Lead Source\"] == \"web\"", vec!["Lead Source"]),
            (
                "\"vip\" in lead && lead.tags.exists(t, t == \"a\")",
                vec!["tags", "vip"],
            ),
            (
                "has(change.status) || lead.owner.startsWith(\"a\")",
                vec!["owner", "status"],
            ),
            ("lead.address.city == \"Oslo\"", vec!["address"]),
            ("[1, 2].exists(x, x == size(lead.tags))", vec!["tags"]),
        ];
        for (expr, fields) in named {
            let fields: Vec<String> = fields.into_iter().map(String::from).collect();
            assert_eq!(reads(expr), Some(fields), "{expr}");
        }
        let touch_counts = "activity.kind == \"call\" && activity.by == lead.owner";
        let p = Predicate::compile_for_activity(&Cel::default(), "t", touch_counts).unwrap();
        assert_eq!(p.reads(), Some(&["owner".to_string()][..]));
        for whole in [
            "size(lead) > 3",
            "lead[lead.pick] == \"x\"",
            "lead.exists(k, k.startsWith(\"x\"))",
            "lead == change",
            "type(change) == map",
            "[lead].size() == 1",
        ] {
            assert_eq!(reads(whole), None, "{whole}");
        }
        let rules = "[lifecycle]\nsales_ready = 'lead.stage == \"MQL\"'\n\
                     closed = 'lead.exists(k, k == \"lost\")'\n";
        assert_eq!(Rules::parse(rules).unwrap().kept_fields(), &Projection::All);
    }

    #[test]
    fn a_reload_names_the_fields_the_rules_before_did_not_keep() {
        let before = Rules::parse("[lifecycle]\nsales_ready = 'lead.stage == \"MQL\"'\n").unwrap();
        let after = Rules::parse(
            "[lifecycle]\nsales_ready = 'lead.stage == \"MQL\" && lead.industry == \"SaaS\"'\n",
        )
        .unwrap();
        let (before, after) = (before.kept_fields(), after.kept_fields());
        assert_eq!(after.missing_after(before), ["industry"]);
        assert!(
            before.missing_after(after).is_empty(),
            "fewer fields: none missing"
        );
        assert!(after.missing_after(&Projection::All).is_empty());
        assert_eq!(Projection::All.missing_after(after), ["*"]);
    }
}
