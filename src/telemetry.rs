//! Logs (tracing, to stderr: stdout belongs to the `log` sink) and Prometheus metrics.
//! Metric labels take few values: source, sink, outcome, alert type — never a lead id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Sets up logging: `RUST_LOG` filters (default `info`), `LEADWATCH_LOG_FORMAT=json` for JSON lines.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("LEADWATCH_LOG_FORMAT").is_ok_and(|f| f == "json");
    // A second init (tests start several daemons in one process) keeps the first.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceOutcome {
    source: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkOutcome {
    sink: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkReason {
    sink: String,
    reason: String,
}

/// Delivery latency buckets, seconds: from a quarter second to a day (retries span that).
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0, 21600.0,
        86400.0,
    ])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FieldLabel {
    field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    webhook_requests: Family<SourceOutcome, Counter>,
    events_produced: Family<SourceLabel, Counter>,
    engine_events: Family<OutcomeLabel, Counter>,
    alerts_fired: Family<TypeLabel, Counter>,
    deliveries: Family<SinkOutcome, Counter>,
    unrouted: Family<TypeLabel, Counter>,
    retry_backlog: Family<SinkLabel, Gauge>,
    sink_paused: Family<SinkReason, Gauge>,
    delivery_latency: Family<SinkLabel, Histogram, fn() -> Histogram>,
    rule_errors: Family<RuleLabel, Counter>,
    consumer_lag: Family<GroupLabel, Gauge>,
    leads: Gauge,
    /// Leads with an alert due that the engine holds back while it paces a burst.
    alerts_deferred: Gauge,
    budget: EngineBudget,
    producer_ready: Family<ProducerLabel, Gauge>,
    producer_rebuilds: Counter,
    /// Records a producer dropped unsent when a revocation's flush did not finish, by producer.
    producer_purged: Family<ProducerLabel, Counter>,
    rules_reloads: Family<OutcomeLabel, Counter>,
    /// Reloads whose rules read a field the rules before did not keep, by field.
    fields_missing_after_reload: Family<FieldLabel, Counter>,
    rule_missing_fields: Family<RuleLabel, Counter>,
    alerts_without_recipients: Family<TypeLabel, Counter>,
    ingest_events: Family<SourceOutcome, Counter>,
    raw_records: Family<SourceOutcome, Counter>,
    values_cut: Family<SourceLabel, Counter>,
    clock_clamped: Family<SourceLabel, Counter>,
    http_refused: Family<ReasonLabel, Counter>,
    reassignments_skipped: Family<SinkReason, Counter>,
    ledger_expired: Counter,
    /// Attempts a revocation of dispatcher partitions waits for now.
    revoke_waiting: Gauge,
    /// Revocations that stopped waiting at their bound.
    revoke_waits_exceeded: Counter,
    /// What must never pass silently: quarantined records, skipped offsets, unreadable records,
    /// failed restores, role restarts, stalls.
    kafka: KafkaTrouble,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicReason {
    topic: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

/// Which of the daemon's producers: `ingest` (webhooks) or `roles` (the engine and the
/// dispatcher).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProducerLabel {
    producer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

/// The metrics of issue 11: every one is an error log too, and an alert rule can page on each.
struct KafkaTrouble {
    quarantined: Family<TopicReason, Counter>,
    states_without_window: Counter,
    skipped: Family<TopicLabel, Counter>,
    unreadable: Family<TopicLabel, Counter>,
    restore_failures: Family<TopicLabel, Counter>,
    restores_failing: Family<TopicLabel, Gauge>,
    role_restarts: Family<RoleLabel, Counter>,
    stalled: Family<StageLabel, Gauge>,
    backlog_bytes: Family<TopicLabel, Gauge>,
}

impl KafkaTrouble {
    fn register(registry: &mut Registry) -> Self {
        let this = Self {
            quarantined: Family::default(),
            states_without_window: Counter::default(),
            skipped: Family::default(),
            unreadable: Family::default(),
            restore_failures: Family::default(),
            restores_failing: Family::default(),
            role_restarts: Family::default(),
            stalled: Family::default(),
            backlog_bytes: Family::default(),
        };
        registry.register(
            "kafka_records_quarantined",
            "Records Kafka refused for good (too_large, invalid_record, not_authorized), by topic: \
             a reference is in the dead-letter topic and the work that waited on them moved on",
            this.quarantined.clone(),
        );
        registry.register(
            "engine_states_without_window",
            "Lead states too large for Kafka written without their reorder window",
            this.states_without_window.clone(),
        );
        registry.register(
            "kafka_offsets_skipped",
            "Offsets a consumer jumped over (deleted by retention or trimming before they were \
             read), by topic",
            this.skipped.clone(),
        );
        registry.register(
            "kafka_records_unreadable",
            "Records that could not be read (events, alerts, changelog records on restore), by \
             topic: each is dead-lettered",
            this.unreadable.clone(),
        );
        registry.register(
            "restore_failures",
            "Changelog restores that failed (retried with backoff), by changelog topic",
            this.restore_failures.clone(),
        );
        registry.register(
            "restores_failing",
            "Partitions whose last changelog restore failed and is being retried, by changelog topic",
            this.restores_failing.clone(),
        );
        registry.register(
            "role_restarts",
            "Roles restarted by their supervisor after a panic or an error, by role",
            this.role_restarts.clone(),
        );
        registry.register(
            "stalled",
            "Loops and partitions that made no progress for `stall_timeout`, by stage (/healthz \
             fails meanwhile)",
            this.stalled.clone(),
        );
        registry.register(
            "embedded_backlog_bytes",
            "The embedded broker: unconsumed bytes of the fullest partition, by topic (ingest \
             answers 503 before it could reach the broker's trimming limit)",
            this.backlog_bytes.clone(),
        );
        this
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("leadwatch");
        let webhook_requests = Family::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by source and outcome (accepted, unauthorized, too_large, malformed, unavailable, …)",
            webhook_requests.clone(),
        );
        let events_produced = Family::default();
        registry.register(
            "events_produced",
            "Lead events acknowledged by Kafka, by source",
            events_produced.clone(),
        );
        let engine_events = Family::default();
        registry.register(
            "engine_events",
            "Events the engine consumed, by outcome (applied, duplicate, invalid)",
            engine_events.clone(),
        );
        let alerts_fired = Family::default();
        registry.register(
            "alerts_fired",
            "Alerts the engine fired, by type",
            alerts_fired.clone(),
        );
        let deliveries = Family::default();
        registry.register(
            "alert_deliveries",
            "Alert deliveries by sink and outcome (delivered, already_there, retry_scheduled, dead_lettered, skipped, sink_paused, unreadable_alert)",
            deliveries.clone(),
        );
        let unrouted = Family::default();
        registry.register(
            "alerts_unrouted",
            "Alerts no route matched (logged, not delivered), by type",
            unrouted.clone(),
        );
        let retry_backlog = Family::default();
        registry.register(
            "delivery_retry_backlog",
            "Deliveries waiting for a retry in this instance's partitions, by sink",
            retry_backlog.clone(),
        );
        let sink_paused = Family::default();
        registry.register(
            "sink_paused",
            "1 while a sink is paused because it refused our credentials (reason: token_refused, \
             unauthorized, missing_scopes); its deliveries wait in the backlog",
            sink_paused.clone(),
        );
        let delivery_latency =
            Family::<SinkLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "alert_delivery_latency_seconds",
            "From an alert's deadline (a reminder: its firing) to its delivery, by sink",
            delivery_latency.clone(),
        );
        let rule_errors = Family::default();
        registry.register(
            "rule_errors",
            "Rule expressions that failed to evaluate and counted as false",
            rule_errors.clone(),
        );
        let consumer_lag = Family::default();
        registry.register(
            "consumer_lag_messages",
            "Messages not yet consumed, summed over this instance's partitions, by consumer group",
            consumer_lag.clone(),
        );
        let leads = Gauge::default();
        registry.register(
            "engine_leads",
            "Leads held by this instance's engine",
            leads.clone(),
        );
        let alerts_deferred = Gauge::default();
        registry.register(
            "engine_alerts_deferred",
            "Leads with an alert due that the engine holds back while it fires a burst in batches \
             (after an outage, a restore or a reload): each fires as the producer has room",
            alerts_deferred.clone(),
        );
        let budget = EngineBudget::register(&mut registry);
        let producer_ready = Family::default();
        registry.register(
            "producer_ready",
            "1 when the Kafka producer is healthy and the cluster answers, by producer (ingest, \
             engine, dispatch)",
            producer_ready.clone(),
        );
        let producer_rebuilds = Counter::default();
        registry.register(
            "producer_rebuilds",
            "Kafka producers rebuilt after a fatal error",
            producer_rebuilds.clone(),
        );
        let producer_purged = Family::default();
        registry.register(
            "producer_purged",
            "Records a producer held and dropped unsent (purged) because a revocation's flush did \
             not finish, so they cannot land after the next owner restored, by producer",
            producer_purged.clone(),
        );
        let alerts_without_recipients = Family::default();
        registry.register(
            "alerts_without_recipients",
            "Alerts fired that name no person (an owner or manager missing from [directory]), by type",
            alerts_without_recipients.clone(),
        );
        let rule_missing_fields = Family::default();
        registry.register(
            "rule_missing_fields",
            "Rule evaluations that were false because the lead lacks a field the rule names \
             (a mistyped field name shows here)",
            rule_missing_fields.clone(),
        );
        let rules_reloads = Family::default();
        registry.register(
            "rules_reloads",
            "Rules reloads (SIGHUP) by outcome: applied, or invalid (the old rules stay)",
            rules_reloads.clone(),
        );
        let fields_missing_after_reload = Family::default();
        registry.register(
            "engine_fields_missing_after_reload",
            "Rules reloads whose rules read a lead field the rules before did not keep, by field: \
             leads lack it until their next event carries it, or a `leadwatch replay`",
            fields_missing_after_reload.clone(),
        );
        let ingest_events = Family::default();
        registry.register(
            "ingest_events",
            "Vendor events by source and outcome (produced, duplicate, ignored, forbidden)",
            ingest_events.clone(),
        );
        let raw_records = Family::default();
        registry.register(
            "raw_records",
            "Authentic requests kept in the raw topic, by source and outcome (parsed, unparsed)",
            raw_records.clone(),
        );
        let values_cut = Family::default();
        registry.register(
            "ingest_values_cut",
            "String values of produced events cut to server.max_field_bytes or to fit \
             server.max_event_bytes, by source (the raw topic keeps them whole)",
            values_cut.clone(),
        );
        let clock_clamped = Family::default();
        registry.register(
            "ingest_clock_clamped",
            "Events stamped more than server.max_clock_skew ahead of their arrival, clamped to \
             it, by source",
            clock_clamped.clone(),
        );
        let http_refused = Family::default();
        registry.register(
            "http_refused",
            "HTTP connections and requests refused before any route saw them, by reason \
             (connection_limit, headers_too_large)",
            http_refused.clone(),
        );
        let reassignments_skipped = Family::default();
        registry.register(
            "reassignments_skipped",
            "Suggested reassignments a CRM sink did not apply (the task was still created), by \
             sink and reason (owner_changed, kept_changing, refused, not_a_user)",
            reassignments_skipped.clone(),
        );
        let ledger_expired = Counter::default();
        registry.register(
            "ledger_deliveries_expired",
            "Deliveries the ledger forgot because their alert is older than \
             dispatch.ledger_retention (the alerts topic no longer holds it)",
            ledger_expired.clone(),
        );
        let revoke_waiting = Gauge::default();
        registry.register(
            "dispatch_revoke_waiting",
            "Deliveries a revocation of dispatcher partitions waits for: under way to a sink, \
             what they came to not yet acknowledged by Kafka (the rebalance goes on after)",
            revoke_waiting.clone(),
        );
        let revoke_waits_exceeded = Counter::default();
        registry.register(
            "dispatch_revoke_waits_exceeded",
            "Revocations of dispatcher partitions that stopped waiting for their deliveries at \
             the bound (each a warning log): those deliveries may be sent again by the next owner",
            revoke_waits_exceeded.clone(),
        );
        let kafka = KafkaTrouble::register(&mut registry);
        Self {
            kafka,
            revoke_waiting,
            revoke_waits_exceeded,
            reassignments_skipped,
            ledger_expired,
            values_cut,
            clock_clamped,
            http_refused,
            alerts_without_recipients,
            rule_missing_fields,
            rules_reloads,
            fields_missing_after_reload,
            ingest_events,
            raw_records,
            producer_rebuilds,
            producer_purged,
            registry,
            webhook_requests,
            events_produced,
            engine_events,
            alerts_fired,
            deliveries,
            unrouted,
            retry_backlog,
            sink_paused,
            delivery_latency,
            rule_errors,
            consumer_lag,
            leads,
            alerts_deferred,
            budget,
            producer_ready,
        }
    }

    pub fn webhook_request(&self, source: &str, outcome: &str) {
        self.webhook_requests
            .get_or_create(&SourceOutcome {
                source: source.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn events_produced(&self, source: &str, n: u64) {
        self.events_produced
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .inc_by(n);
    }

    /// Counts `n` vendor events of a source by outcome (nothing when `n` is 0).
    pub fn ingest_events(&self, source: &str, outcome: &str, n: usize) {
        if n == 0 {
            return;
        }
        self.ingest_events
            .get_or_create(&SourceOutcome {
                source: source.into(),
                outcome: outcome.into(),
            })
            .inc_by(n as u64);
    }

    /// Counts what holding a request's events to the limits changed (nothing when nothing).
    pub fn ingest_adjusted(&self, source: &str, values_cut: usize, clamped: usize) {
        let label = || SourceLabel {
            source: source.into(),
        };
        if values_cut > 0 {
            self.values_cut
                .get_or_create(&label())
                .inc_by(values_cut as u64);
        }
        if clamped > 0 {
            self.clock_clamped
                .get_or_create(&label())
                .inc_by(clamped as u64);
        }
    }

    /// Counts a connection or request refused by the HTTP listener itself.
    pub fn http_refused(&self, reason: &str) {
        self.http_refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a request kept in the raw topic.
    pub fn raw_captured(&self, source: &str, parsed: bool) {
        self.raw_records
            .get_or_create(&SourceOutcome {
                source: source.into(),
                outcome: if parsed { "parsed" } else { "unparsed" }.into(),
            })
            .inc();
    }

    pub fn engine_event(&self, outcome: &str) {
        self.engine_events
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn alert_fired(&self, kind: &str) {
        self.alerts_fired
            .get_or_create(&TypeLabel {
                r#type: kind.into(),
            })
            .inc();
    }

    pub fn delivery(&self, sink: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&SinkOutcome {
                sink: sink.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn unrouted(&self, kind: &str) {
        self.unrouted
            .get_or_create(&TypeLabel {
                r#type: kind.into(),
            })
            .inc();
    }

    pub fn set_retry_backlog(&self, sink: &str, n: i64) {
        self.retry_backlog
            .get_or_create(&SinkLabel { sink: sink.into() })
            .set(n);
    }

    /// `leadwatch_dispatch_revoke_waiting`.
    pub fn set_revoke_waiting(&self, n: usize) {
        self.revoke_waiting
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// `leadwatch_dispatch_revoke_waits_exceeded_total`.
    pub fn revoke_wait_exceeded(&self) {
        self.revoke_waits_exceeded.inc();
    }

    /// `leadwatch_ledger_deliveries_expired_total`.
    pub fn ledger_expired(&self, n: usize) {
        self.ledger_expired.inc_by(n as u64);
    }

    /// `leadwatch_reassignments_skipped_total{sink, reason}`.
    pub fn reassignment_skipped(&self, sink: &str, reason: &str) {
        self.reassignments_skipped
            .get_or_create(&SinkReason {
                sink: sink.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// `leadwatch_sink_paused{sink, reason}`: 1 while paused for that reason, else 0.
    pub fn set_sink_paused(&self, sink: &str, reason: &str, paused: bool) {
        self.sink_paused
            .get_or_create(&SinkReason {
                sink: sink.into(),
                reason: reason.into(),
            })
            .set(i64::from(paused));
    }

    pub fn delivery_latency(&self, sink: &str, seconds: f64) {
        self.delivery_latency
            .get_or_create(&SinkLabel { sink: sink.into() })
            .observe(seconds);
    }

    pub fn rule_errors(&self, rule: &str) {
        self.rule_errors
            .get_or_create(&RuleLabel { rule: rule.into() })
            .inc();
    }

    pub fn set_consumer_lag(&self, group: &str, lag: i64) {
        self.consumer_lag
            .get_or_create(&GroupLabel {
                group: group.into(),
            })
            .set(lag);
    }

    pub fn set_leads(&self, n: i64) {
        self.leads.set(n);
    }

    /// Leads with an alert due, held back to pace firing.
    pub fn set_alerts_deferred(&self, n: usize) {
        self.alerts_deferred
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The engine's memory against `[engine] memory_budget_mib`.
    pub fn engine_budget(&self) -> &EngineBudget {
        &self.budget
    }

    pub fn producer_rebuilt(&self) {
        self.producer_rebuilds.inc();
    }

    /// `records` the producer `producer` held were purged at a revocation.
    pub fn producer_purged(&self, producer: &str, records: u64) {
        self.producer_purged
            .get_or_create(&ProducerLabel {
                producer: producer.into(),
            })
            .inc_by(records);
    }

    /// Whether the producer `producer` (`ingest`, `engine`, `dispatch`) is healthy and the
    /// cluster answers.
    pub fn set_producer_ready(&self, producer: &str, ready: bool) {
        self.producer_ready
            .get_or_create(&ProducerLabel {
                producer: producer.into(),
            })
            .set(ready as i64);
    }

    pub fn alert_without_recipients(&self, kind: &str) {
        self.alerts_without_recipients
            .get_or_create(&TypeLabel {
                r#type: kind.into(),
            })
            .inc();
    }

    pub fn rule_missing_field(&self, rule: &str) {
        self.rule_missing_fields
            .get_or_create(&RuleLabel { rule: rule.into() })
            .inc();
    }

    /// A reload's rules read `field`, which the rules before did not keep.
    pub fn field_missing_after_reload(&self, field: &str) {
        self.fields_missing_after_reload
            .get_or_create(&FieldLabel {
                field: field.into(),
            })
            .inc();
    }

    pub fn rules_reload(&self, outcome: &str) {
        self.rules_reloads
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A record Kafka refused for good was quarantined.
    pub fn record_quarantined(&self, topic: &str, reason: &str) {
        self.kafka
            .quarantined
            .get_or_create(&TopicReason {
                topic: topic.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A lead state too large for Kafka was written without its reorder window.
    pub fn state_without_window(&self) {
        self.kafka.states_without_window.inc();
    }

    /// A consumer jumped over `n` offsets of `topic`.
    pub fn offsets_skipped(&self, topic: &str, n: u64) {
        self.kafka
            .skipped
            .get_or_create(&TopicLabel {
                topic: topic.into(),
            })
            .inc_by(n);
    }

    /// A record of `topic` could not be read (and was dead-lettered).
    pub fn record_unreadable(&self, topic: &str) {
        self.kafka
            .unreadable
            .get_or_create(&TopicLabel {
                topic: topic.into(),
            })
            .inc();
    }

    /// A restore of `topic` failed; `failing` partitions' restores are failing now.
    pub fn restore_failed(&self, topic: &str) {
        self.kafka
            .restore_failures
            .get_or_create(&TopicLabel {
                topic: topic.into(),
            })
            .inc();
    }

    /// How many partitions' restores of `topic` are failing now.
    pub fn set_restores_failing(&self, topic: &str, n: i64) {
        self.kafka
            .restores_failing
            .get_or_create(&TopicLabel {
                topic: topic.into(),
            })
            .set(n);
    }

    /// The supervisor restarted `role`.
    pub fn role_restarted(&self, role: &str) {
        self.kafka
            .role_restarts
            .get_or_create(&RoleLabel { role: role.into() })
            .inc();
    }

    /// How many of `stage`'s loops and partitions are stalled now.
    pub fn set_stalled(&self, stage: &str, n: i64) {
        self.kafka
            .stalled
            .get_or_create(&StageLabel {
                stage: stage.into(),
            })
            .set(n);
    }

    /// The embedded broker: unconsumed bytes of `topic`'s fullest partition.
    pub fn set_embedded_backlog(&self, topic: &str, bytes: i64) {
        self.kafka
            .backlog_bytes
            .get_or_create(&TopicLabel {
                topic: topic.into(),
            })
            .set(bytes);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The engine's memory against its budget: what it holds, how far its reorder window was
/// shrunk to stay under, and whether the open leads alone are over.
#[derive(Debug, Clone, Default)]
pub struct EngineBudget {
    held: Gauge,
    window: Gauge,
    shrinks: Counter,
    over: Gauge,
}

impl EngineBudget {
    fn register(registry: &mut Registry) -> Self {
        let b = Self::default();
        registry.register(
            "engine_held_bytes",
            "About the bytes the engine's leads hold in memory (estimated), against \
             engine.memory_budget_mib",
            b.held.clone(),
        );
        registry.register(
            "engine_reorder_window_seconds",
            "The reorder window in force: engine.reorder_window, or less while memory is over \
             budget",
            b.window.clone(),
        );
        registry.register(
            "engine_window_shrinks",
            "Times the reorder window was halved (and windows folded early) to stay within \
             engine.memory_budget_mib",
            b.shrinks.clone(),
        );
        registry.register(
            "engine_over_budget",
            "1 while the leads held exceed engine.memory_budget_mib with no reorder window left \
             to give way: the open leads alone need more (see the README's sizing)",
            b.over.clone(),
        );
        b
    }

    pub fn set_held(&self, bytes: usize) {
        self.held.set(bytes.min(i64::MAX as usize) as i64);
    }

    pub fn set_window(&self, window: std::time::Duration) {
        self.window.set(window.as_secs() as i64);
    }

    pub fn shrunk(&self) {
        self.shrinks.inc();
    }

    pub fn set_over(&self, over: bool) {
        self.over.set(i64::from(over));
    }
}
