DROP TABLE check_groups;
