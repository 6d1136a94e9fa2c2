DROP INDEX agents_choice_group;
DROP TABLE check_agents;
ALTER TABLE checks DROP COLUMN spread;
