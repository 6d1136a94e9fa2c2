-- The check kinds an agent says it can measure (comma-separated wire names), from its
-- heartbeat. An agent from before page loads says nothing and can only measure `http`:
-- planning it into a page run would hand it a task it cannot even parse.
ALTER TABLE agents ADD COLUMN check_kinds TEXT NOT NULL DEFAULT 'http';
