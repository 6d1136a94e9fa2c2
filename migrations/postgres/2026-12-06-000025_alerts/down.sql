DROP TABLE alert_deliveries;
DROP TABLE incidents;
DROP TABLE alert_rule_channels;
DROP TABLE alert_rules;
DROP TABLE alert_channels;
