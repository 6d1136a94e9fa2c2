DROP TABLE check_agents;
ALTER TABLE checks DROP COLUMN spread;
