-- What churn.* and ltv.* published for :as_of, one row per customer: the
-- retention model scores the value at risk from the two predictions.
SELECT
    p.customer_id,
    p.country,
    p.score AS churn_score,
    l.prediction AS ltv
FROM predictions AS p
JOIN ltv_predictions AS l
  ON l.customer_id = p.customer_id AND l.as_of = p.as_of
WHERE p.as_of = :as_of
  AND p.job LIKE 'churn.%'
  AND l.job LIKE 'ltv.%'
