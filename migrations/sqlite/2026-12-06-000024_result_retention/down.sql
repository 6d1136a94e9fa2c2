DROP INDEX results_received;
DROP TABLE agent_work_days;
