-- Features for the lifetime-value model: one row per customer of :country for :as_of.
SELECT
    customer_id,
    tenure_months,
    monthly_charges,
    total_charges,
    support_calls,
    days_since_login,
    plan,
    country
FROM customer_features
WHERE snapshot_date = :as_of
  AND country = :country
