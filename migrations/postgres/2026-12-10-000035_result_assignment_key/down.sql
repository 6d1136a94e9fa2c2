ALTER TABLE results ADD FOREIGN KEY (assignment_id) REFERENCES assignments(id);
