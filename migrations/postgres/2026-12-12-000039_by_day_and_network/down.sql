DROP INDEX aggregates_asn;
DROP INDEX agent_work_days_day;
DROP INDEX agent_uptime_day;
