-- An owner's checks are listed (`GET /api/v1/checks`, the dashboard) and walked by every
-- run's admission (credit held for the owner's work in flight): by owner, not by
-- reading every check.
CREATE INDEX checks_owner ON checks (owner_id, created_at);
-- Open assignments by check, for the credit held at each run's admission: the cost is
-- the owner's work in flight, not every assignment ever made. Partial like
-- `assignments_open`, so closing an assignment writes no entry here.
CREATE INDEX assignments_open_check ON assignments (check_id, run_id)
    WHERE state IN ('pending', 'leased');
