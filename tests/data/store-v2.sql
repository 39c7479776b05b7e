-- A store as schema version 2 (before the store owned the alert outbox) wrote it: two services
-- observed for five minutes, an open unexpected_up incident, one pending webhook alert.
-- Made with Store.add/flush/record_event and an AlertSender hook, then dumped with iterdump.
PRAGMA user_version = 2;
BEGIN TRANSACTION;
CREATE TABLE alert_outbox (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    failed_at REAL,
    UNIQUE (sink, dedup_key)
);
INSERT INTO "alert_outbox" VALUES(1,'webhook','incident-1-opened','{"at": "2022-06-22T10:02:00Z", "body": "", "body_en": "", "business": "social-insurance", "channel": "hbzwfw", "channel_name": "湖北政务服务网", "channel_name_en": "Hubei government services portal", "dedup_key": "incident-1-opened", "direction": "unexpected_up", "expected": "down", "incident": 1, "kind": "opened", "notice": "", "notice_title": "", "notice_title_en": "", "opened_at": "2022-06-22T10:02:00Z", "period": "freeze", "period_title": "系统切换冻结期", "period_title_en": "cutover freeze", "reason": "HTTP 200", "resolved_at": null, "service_name": "社保缴费", "service_name_en": "social insurance payment", "status": "", "timezone": "Asia/Shanghai"}',1.79667006021676945682e+09,0,1.79667006021676945682e+09,NULL,NULL,NULL);
CREATE TABLE hour_now (service INTEGER PRIMARY KEY, hour INTEGER NOT NULL,
    probes INTEGER NOT NULL, serving INTEGER NOT NULL, expected_up INTEGER NOT NULL,
    expected_down INTEGER NOT NULL, mismatches INTEGER NOT NULL,
    duration_sum INTEGER NOT NULL, duration_max INTEGER NOT NULL);
INSERT INTO "hour_now" VALUES(1,1655892000,3,3,0,3,3,384,129);
INSERT INTO "hour_now" VALUES(2,1655892000,3,3,3,0,0,750,250);
CREATE TABLE hourly (
    service INTEGER NOT NULL,
    hour INTEGER NOT NULL,
    probes INTEGER NOT NULL,
    serving INTEGER NOT NULL,
    expected_up INTEGER NOT NULL,
    expected_down INTEGER NOT NULL,
    mismatches INTEGER NOT NULL,
    duration_sum INTEGER NOT NULL,
    duration_max INTEGER NOT NULL,
    PRIMARY KEY (service, hour)
) WITHOUT ROWID;
INSERT INTO "hourly" VALUES(1,1655888400,2,0,0,2,0,251,126);
INSERT INTO "hourly" VALUES(2,1655888400,2,2,2,0,0,500,250);
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    business TEXT NOT NULL,
    direction TEXT NOT NULL,
    opened_at REAL NOT NULL,
    resolved_at REAL,
    reason TEXT NOT NULL,
    resolve_reason TEXT,
    expected TEXT NOT NULL,
    period TEXT
);
INSERT INTO "incidents" VALUES(1,'hbzwfw','social-insurance','unexpected_up',1655892120.0,NULL,'HTTP 200',NULL,'down','freeze');
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    service INTEGER NOT NULL,
    at REAL NOT NULL,
    until REAL NOT NULL,
    count INTEGER NOT NULL,
    gap INTEGER NOT NULL,
    serving INTEGER NOT NULL,
    reason TEXT NOT NULL,
    expected TEXT NOT NULL,
    mismatch TEXT,
    status_code INTEGER,
    duration REAL NOT NULL
);
INSERT INTO "runs" VALUES(1,1,1655891880.0,1655891940.0,2,60000,0,'HTTP 503','down',NULL,503,0.126);
INSERT INTO "runs" VALUES(2,2,1655891880.0,1655891940.0,2,60000,1,'HTTP 200','up',NULL,200,0.25);
INSERT INTO "runs" VALUES(3,1,1655892000.0,1655892120.0,3,60000,1,'HTTP 200','down','unexpected_up',200,0.129);
INSERT INTO "runs" VALUES(4,2,1655892000.0,1655892120.0,3,60000,1,'HTTP 200','up',NULL,200,0.25);
CREATE TABLE services (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    business TEXT NOT NULL,
    UNIQUE (channel, business)
);
INSERT INTO "services" VALUES(1,'hbzwfw','social-insurance');
INSERT INTO "services" VALUES(2,'hbzwfw','medical');
CREATE INDEX incidents_open ON incidents (resolved_at);
CREATE INDEX runs_service_at ON runs (service, at);
CREATE INDEX runs_at ON runs (at);
CREATE VIEW observations AS
    SELECT s.channel, s.business, r.at, r.until, r.count, r.gap / 1000.0 AS gap, r.serving,
           r.reason, r.expected, r.mismatch, r.status_code, r.duration
    FROM runs r JOIN services s ON s.id = r.service;
CREATE VIEW rollups AS
    SELECT s.channel, s.business, h.hour, h.probes, h.serving, h.expected_up, h.expected_down,
           h.mismatches, h.duration_sum / 1000.0 AS duration_sum,
           h.duration_max / 1000.0 AS duration_max
    FROM hourly h JOIN services s ON s.id = h.service
    UNION ALL
    SELECT s.channel, s.business, h.hour, h.probes, h.serving, h.expected_up, h.expected_down,
           h.mismatches, h.duration_sum / 1000.0 AS duration_sum,
           h.duration_max / 1000.0 AS duration_max
    FROM hour_now h JOIN services s ON s.id = h.service;
CREATE INDEX alert_outbox_pending
    ON alert_outbox (sink, next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
COMMIT;
