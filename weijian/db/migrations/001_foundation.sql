-- Foundation schema: registry, time series, alerts, inspections, notifications, dead letters.
CREATE EXTENSION IF NOT EXISTS timescaledb;

-- Platform secrets generated on first migrate (e.g. the API token signing key).
CREATE TABLE app_secrets (
    name        text PRIMARY KEY,
    value       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sites (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('disinfection_plant', 'medical_institution')),
    district    text NOT NULL,
    address     text,
    lat         double precision CHECK (lat BETWEEN -90 AND 90),
    lon         double precision CHECK (lon BETWEEN -180 AND 180),
    phones      text[] NOT NULL DEFAULT '{}',
    -- Overrides of the site kind's default limits (weijian/alerts/profiles.py).
    profile     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sites_district ON sites (district);

CREATE TABLE devices (
    id            text PRIMARY KEY,
    site_id       text NOT NULL REFERENCES sites (id),
    kind          text NOT NULL,
    name          text,
    interval_s    integer NOT NULL CHECK (interval_s > 0),
    profile       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    credentials_issued_at timestamptz,
    -- Presence: from status messages and activity, updated once per batch, not per message.
    online        boolean,
    status_at     timestamptz,
    last_seen_at  timestamptz,
    last_seq      bigint
);
CREATE INDEX devices_site ON devices (site_id);

CREATE TABLE users (
    id             bigserial PRIMARY KEY,
    username       text NOT NULL UNIQUE,
    name           text NOT NULL,
    role           text NOT NULL CHECK (role IN ('admin', 'supervisor', 'inspector', 'operator')),
    district       text,
    phone          text,
    -- Operators see only their own sites.
    site_ids       text[] NOT NULL DEFAULT '{}',
    password_hash  text NOT NULL,
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'inspector' OR district IS NOT NULL)
);

-- Time series (contract: docs/operations.md). Unique keys make every resend idempotent.
CREATE TABLE readings (
    ts           timestamptz NOT NULL,
    device_id    text NOT NULL,
    metric       text NOT NULL,
    value        double precision NOT NULL,
    seq          bigint,
    received_at  timestamptz NOT NULL
);
SELECT create_hypertable('readings', 'ts', chunk_time_interval => interval '1 day');
CREATE UNIQUE INDEX readings_device_metric_ts ON readings (device_id, metric, ts);

CREATE TABLE events (
    ts           timestamptz NOT NULL,
    device_id    text NOT NULL,
    type         text NOT NULL,
    data         jsonb NOT NULL DEFAULT '{}',
    seq          bigint,
    received_at  timestamptz NOT NULL
);
SELECT create_hypertable('events', 'ts', chunk_time_interval => interval '7 days');
CREATE UNIQUE INDEX events_device_type_ts ON events (device_id, type, ts);

CREATE TABLE dead_letters (
    id            bigserial PRIMARY KEY,
    received_at   timestamptz NOT NULL DEFAULT now(),
    topic         text NOT NULL,
    device_id     text,
    reason        text NOT NULL,
    payload       bytea NOT NULL,
    payload_size  integer NOT NULL
);
CREATE INDEX dead_letters_received ON dead_letters (received_at);

CREATE TABLE alerts (
    id               bigserial PRIMARY KEY,
    fingerprint      text NOT NULL,
    rule             text NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('info', 'warning', 'major', 'critical')),
    status           text NOT NULL CHECK (status IN ('firing', 'acknowledged', 'resolved')),
    site_id          text NOT NULL REFERENCES sites (id),
    device_id        text REFERENCES devices (id),
    started_at       timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL,
    detected_at      timestamptz NOT NULL DEFAULT now(),
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    resolved_by      text,
    value            double precision,
    limit_value      double precision,
    unit             text,
    source           text NOT NULL,
    summary          text NOT NULL,
    evidence_from    timestamptz,
    evidence_to      timestamptz,
    evidence_metric  text,
    occurrences      integer NOT NULL DEFAULT 1,
    -- Consecutive clear verdicts seen while active (hysteresis before auto-resolve).
    clear_streak     integer NOT NULL DEFAULT 0,
    details          jsonb NOT NULL DEFAULT '{}'
);
-- One active alert per fingerprint (rule, site, device).
CREATE UNIQUE INDEX alerts_one_active ON alerts (fingerprint) WHERE status <> 'resolved';
CREATE INDEX alerts_site_status ON alerts (site_id, status);
CREATE INDEX alerts_detected ON alerts (detected_at DESC);

-- Episodes (a batch, a bag, a day) already raised, so re-evaluation never raises one twice.
CREATE TABLE alert_episodes (
    fingerprint  text NOT NULL,
    episode      text NOT NULL,
    alert_id     bigint NOT NULL REFERENCES alerts (id),
    seen_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fingerprint, episode)
);

CREATE TABLE alert_history (
    id           bigserial PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alerts (id),
    at           timestamptz NOT NULL DEFAULT now(),
    action       text NOT NULL,
    from_status  text,
    to_status    text,
    severity     text,
    actor        text NOT NULL,
    note         text,
    details      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_history_alert ON alert_history (alert_id, id);

CREATE TABLE silences (
    id          bigserial PRIMARY KEY,
    site_id     text REFERENCES sites (id),
    device_id   text REFERENCES devices (id),
    rule        text,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL CHECK (ends_at > starts_at),
    reason      text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE inspection_tasks (
    id             bigserial PRIMARY KEY,
    site_id        text NOT NULL REFERENCES sites (id),
    status         text NOT NULL CHECK (status IN ('assigned', 'in_progress', 'concluded', 'closed')),
    severity       text NOT NULL,
    title          text NOT NULL,
    inspectors     text[] NOT NULL,
    opened_at      timestamptz NOT NULL DEFAULT now(),
    due_at         timestamptz NOT NULL,
    concluded_at   timestamptz,
    conclusion     text CHECK (conclusion IN ('violation', 'no_violation', 'false_alarm')),
    case_filed     boolean NOT NULL DEFAULT false,
    published_at   timestamptz,
    closed_at      timestamptz
);
-- At most one open task per site: new serious alerts join it.
CREATE UNIQUE INDEX inspection_tasks_one_open ON inspection_tasks (site_id)
    WHERE status IN ('assigned', 'in_progress');

CREATE TABLE task_alerts (
    task_id   bigint NOT NULL REFERENCES inspection_tasks (id),
    alert_id  bigint NOT NULL REFERENCES alerts (id),
    PRIMARY KEY (task_id, alert_id)
);

CREATE TABLE task_history (
    id           bigserial PRIMARY KEY,
    task_id      bigint NOT NULL REFERENCES inspection_tasks (id),
    at           timestamptz NOT NULL DEFAULT now(),
    action       text NOT NULL,
    from_status  text,
    to_status    text,
    actor        text NOT NULL,
    note         text,
    details      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX task_history_task ON task_history (task_id, id);

-- Notification outbox, written in the same transaction as the change that causes it.
CREATE TABLE notifications (
    id               bigserial PRIMARY KEY,
    created_at       timestamptz NOT NULL DEFAULT now(),
    channel          text NOT NULL DEFAULT 'sms',
    recipient        text NOT NULL,
    recipient_name   text,
    recipient_role   text NOT NULL,
    template         text NOT NULL,
    body             text NOT NULL,
    params           jsonb NOT NULL DEFAULT '{}',
    alert_id         bigint REFERENCES alerts (id),
    task_id          bigint REFERENCES inspection_tasks (id),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'failed', 'suppressed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    provider         text,
    provider_ref     text,
    error            text
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';

-- Every change of a limit, with who and when.
CREATE TABLE profile_changes (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    site_id     text REFERENCES sites (id),
    device_id   text REFERENCES devices (id),
    key         text NOT NULL,
    old_value   jsonb,
    new_value   jsonb
);

-- Histories are append-only: the record of every step can be replayed, never rewritten.
CREATE FUNCTION refuse_history_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER alert_history_append_only BEFORE UPDATE OR DELETE ON alert_history
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER task_history_append_only BEFORE UPDATE OR DELETE ON task_history
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER profile_changes_append_only BEFORE UPDATE OR DELETE ON profile_changes
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
