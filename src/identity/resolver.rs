//! The resolver: records and the identities they assert in, persons and their lead keys out.
//!
//! Records and identities form a graph (a record holds its own key and each identity its events
//! asserted last, per [`Slot`]); a person is a connected part of it. Assertions that only add
//! join parts (the smaller into the larger); one that takes an identity away (an email that
//! changed) splits the record's person again by a walk over its members. The groups depend only
//! on what each record holds, never on the order it was learned in.
//!
//! A person's lead key: the least key of its CRM records ([`CRM`]: Salesforce, HubSpot,
//! Pipedrive), else its record seen first; a record with no identity is a lead of its own under
//! its own key, as without the join.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{CRM, Identity, Slot, system_of};

/// What an observation left: the record's lead key, and what it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The lead key of the record's person, now.
    pub lead: String,
    /// The record's lead key before (`None`: the record was new).
    pub before: Option<String>,
    /// Leads of their own until now that are part of `lead` now (a merge), by their keys before;
    /// the record's own `before` is not among them.
    pub merged: Vec<String>,
}

/// The records seen so far and the persons they make.
#[derive(Debug, Default)]
pub struct Resolver {
    records: HashMap<String, Record>,
    /// Identity → the records holding it (a record's own key included).
    holders: HashMap<Identity, HashSet<String>>,
    person_of: HashMap<String, u64>,
    persons: HashMap<u64, Person>,
    next_person: u64,
    /// Records seen so far: the order a person without a CRM record takes its key by.
    seen: u64,
}

#[derive(Debug)]
struct Record {
    slots: BTreeMap<Slot, Identity>,
    /// When it was first seen (the resolver's count).
    seen: u64,
}

#[derive(Debug)]
struct Person {
    members: Vec<String>,
    /// Its CRM records, for its lead key.
    crm: BTreeSet<String>,
    /// Its record seen first.
    first: (u64, String),
}

impl Person {
    fn lead(&self) -> &str {
        self.crm.first().unwrap_or(&self.first.1)
    }
}

impl Resolver {
    /// Takes what one event of `record` asserted (each slot it set, [`super::assertions`]);
    /// answers the record's lead key now and what changed.
    pub fn observe(&mut self, record: &str, asserted: &[(Slot, Option<Identity>)]) -> Resolved {
        let before = self.lead_of(record).map(str::to_string);
        let mut added = Vec::new();
        if before.is_none() {
            self.seen += 1;
            self.records.insert(
                record.to_string(),
                Record {
                    slots: BTreeMap::new(),
                    seen: self.seen,
                },
            );
            let own = Identity::Record(record.to_string());
            self.holders
                .entry(own.clone())
                .or_default()
                .insert(record.to_string());
            self.new_person(vec![record.to_string()]);
            added.push(own);
        }
        let mut removed = false;
        for (slot, id) in asserted {
            let rec = self.records.get_mut(record).expect("inserted above");
            let old = match id {
                Some(id) => rec.slots.insert(*slot, id.clone()),
                None => rec.slots.remove(slot),
            };
            if old.as_ref() == id.as_ref() {
                continue;
            }
            if let Some(old) = old
                && !holds(rec, record, &old)
            {
                if let Some(h) = self.holders.get_mut(&old) {
                    h.remove(record);
                    if h.is_empty() {
                        self.holders.remove(&old);
                    }
                }
                removed = true;
            }
            if let Some(id) = id
                && self
                    .holders
                    .entry(id.clone())
                    .or_default()
                    .insert(record.to_string())
            {
                added.push(id.clone());
            }
        }
        if removed {
            self.split(self.person_of[record]);
        }
        let mut merged = Vec::new();
        for id in added {
            let holders: Vec<String> = self.holders[&id].iter().cloned().collect();
            for holder in holders {
                let (mine, other) = (self.person_of[record], self.person_of[&holder]);
                if other != mine {
                    let lead = self.persons[&other].lead().to_string();
                    if before.as_deref() != Some(lead.as_str()) {
                        merged.push(lead);
                    }
                    self.join(mine, other);
                }
            }
        }
        merged.sort();
        merged.dedup();
        Resolved {
            lead: self.lead_of(record).expect("seen").to_string(),
            before,
            merged,
        }
    }

    /// The lead key of `record`'s person; `None` for a record not seen.
    pub fn lead_of(&self, record: &str) -> Option<&str> {
        let p = self.person_of.get(record)?;
        Some(self.persons[p].lead())
    }

    /// The records of `record`'s person (itself alone for a record not seen), least key first.
    pub fn records_of<'a>(&'a self, record: &'a str) -> Vec<&'a str> {
        let Some(p) = self.person_of.get(record) else {
            return vec![record];
        };
        let mut members: Vec<&str> = self.persons[p].members.iter().map(String::as_str).collect();
        members.sort_unstable();
        members
    }

    /// Every person's records (least key first), the persons in order of their least key.
    pub fn persons(&self) -> Vec<Vec<&str>> {
        let mut all: Vec<Vec<&str>> = self
            .persons
            .values()
            .map(|p| {
                let mut m: Vec<&str> = p.members.iter().map(String::as_str).collect();
                m.sort_unstable();
                m
            })
            .collect();
        all.sort_unstable();
        all
    }

    fn new_person(&mut self, members: Vec<String>) {
        let id = self.next_person;
        self.next_person += 1;
        let crm = members
            .iter()
            .filter(|m| CRM.contains(&system_of(m)))
            .cloned()
            .collect();
        let first = members
            .iter()
            .map(|m| (self.records[m].seen, m.clone()))
            .min()
            .expect("a person has a record");
        for m in &members {
            self.person_of.insert(m.clone(), id);
        }
        self.persons.insert(
            id,
            Person {
                members,
                crm,
                first,
            },
        );
    }

    /// One person of two: the smaller's records move to the larger.
    fn join(&mut self, a: u64, b: u64) {
        let (into, from) = if self.persons[&a].members.len() >= self.persons[&b].members.len() {
            (a, b)
        } else {
            (b, a)
        };
        let from = self.persons.remove(&from).expect("a person");
        for m in &from.members {
            self.person_of.insert(m.clone(), into);
        }
        let p = self.persons.get_mut(&into).expect("a person");
        p.members.extend(from.members);
        p.crm.extend(from.crm);
        p.first = p.first.clone().min(from.first);
    }

    /// The person `id` again as the connected parts its records make now.
    fn split(&mut self, id: u64) {
        let person = self.persons.remove(&id).expect("a person");
        let mut left: HashSet<&str> = person.members.iter().map(String::as_str).collect();
        let mut parts = Vec::new();
        for start in &person.members {
            if !left.remove(start.as_str()) {
                continue;
            }
            let mut part = vec![start.clone()];
            let mut i = 0;
            while i < part.len() {
                let r = &self.records[&part[i]];
                let own = Identity::Record(part[i].clone());
                for id in r.slots.values().chain([&own]) {
                    for next in self.holders.get(id).into_iter().flatten() {
                        if left.remove(next.as_str()) {
                            part.push(next.clone());
                        }
                    }
                }
                i += 1;
            }
            parts.push(part);
        }
        for part in parts {
            self.new_person(part);
        }
    }
}

/// Whether `rec` (the record `key`) still holds `id` in some slot, or as its own key.
fn holds(rec: &Record, key: &str, id: &Identity) -> bool {
    matches!(id, Identity::Record(k) if k == key) || rec.slots.values().any(|v| v == id)
}
