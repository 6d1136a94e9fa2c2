CREATE INDEX result_payments_transaction ON result_payments (transaction_id);
