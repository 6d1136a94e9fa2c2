DROP INDEX assignments_open_check;
DROP INDEX checks_owner;
