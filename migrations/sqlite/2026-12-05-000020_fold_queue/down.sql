DROP TABLE fold_queue;
DROP TABLE result_payments;
