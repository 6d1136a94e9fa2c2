ALTER TABLE results ADD CONSTRAINT results_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs(id);
ALTER TABLE results ADD CONSTRAINT results_check_id_fkey FOREIGN KEY (check_id) REFERENCES checks(id);
ALTER TABLE results ADD CONSTRAINT results_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES agents(id);
