-- Least-privilege roles for batch-scorer on PostgreSQL (docs/operations.md, "Least privilege").
--
--   owner     runs `batch-scorer init-db`: owns the tool's schema, its tables, the
--             output tables and their views. Reads the feature schema (init-db
--             learns a query job's columns by running its query, and reads one row
--             to check the model). Nothing else needs CREATE.
--   scorer    runs `batch-scorer run` / cron / the daemon / prune: reads the feature
--             tables; reads and writes scoring_runs, rejected_rows, job_locks, the
--             output and _shadow tables, shadow_comparisons, feature_profiles,
--             drift, model_metrics; only READS the model registry (model_versions,
--             model_aliases, model_alias_events). Cannot create anything.
--   deployer  registers and promotes models: SELECT, INSERT on model_versions;
--             SELECT, INSERT, UPDATE on model_aliases; SELECT, INSERT on
--             model_alias_events and feature_profiles (a version's reference
--             profile); their sequences; reads the feature tables (promote checks
--             a version against each job's source). Nothing else.
--   reader    the BI login (Power BI, notebooks): SELECT on the output tables, their
--             _shadow twins and _latest/_daily views, scoring_runs_bi, drift,
--             drift_latest, feature_profiles, model_metrics, shadow_comparisons,
--             model_aliases, model_alias_events, and model_versions without its
--             artifact column. Not scoring_runs (host, pid, error text), not
--             rejected_rows, not job_locks, not the feature tables.
--
-- Run it as a superuser (or a role with CREATEROLE that is a member of owner),
-- with psql variables naming the roles and schemas:
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 \
--        -v owner=batch_scorer_owner -v scorer=batch_scorer -v reader=batch_scorer_bi \
--        -v deployer=batch_scorer_deployer \
--        -v schema=scoring -v feature_schema=features \
--        -f sql/roles_postgresql.sql
--
-- Order. It is idempotent: run it again whenever something below changes.
--   1. Run this file. It creates the roles and the tool's schema. If the feature
--      schema does not exist yet, it says so and skips the feature grants.
--   2. Once the feature schema and its tables exist (and whenever tables are added
--      to it), run this file again: owner and scorer get SELECT on them.
--   3. Run `batch-scorer init-db` as the owner: it creates the tool's tables and
--      each job's output table and views.
--   4. Run this file again: the reader gets SELECT on what init-db made, the
--      deployer its registry grants, and the scorer loses any write on the
--      registry tables.
--   After adding a job with a new output table: init-db as the owner, then this
--   file again (step 4).
--
-- Why step 4 is needed. The reader gets no default privileges, so a table added
-- later stays hidden from BI (never over-granted) until this file runs again. The
-- scorer does get default privileges on what the owner creates, so it can write a
-- new output table at once; those defaults also cover the registry tables on the
-- first init-db, and step 4 takes the scorer's writes on them back.
--
-- Roles are created with LOGIN and no password; set one without putting it in
-- a file or your shell history:  \password batch_scorer
-- The jobs' config then uses e.g. url: postgresql://batch_scorer@db/prod?options=-csearch_path%3Dscoring
-- with the password in PGPASSWORD or ~/.pgpass.

\set ON_ERROR_STOP on

-- Roles (skipped when they exist).
SELECT format('CREATE ROLE %I LOGIN', r)
FROM unnest(ARRAY[:'owner', :'scorer', :'reader', :'deployer']) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)
\gexec

-- The tool's schema: only the owner may create in it.
SELECT format('CREATE SCHEMA %I AUTHORIZATION %I', :'schema', :'owner')
WHERE NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :'schema')
\gexec
GRANT USAGE, CREATE ON SCHEMA :"schema" TO :"owner";
REVOKE CREATE ON SCHEMA :"schema" FROM PUBLIC;
REVOKE CREATE ON SCHEMA :"schema" FROM :"scorer", :"reader", :"deployer";
GRANT USAGE ON SCHEMA :"schema" TO :"scorer", :"reader", :"deployer";

-- Scorer: read and write rows of every table in the tool's schema (the ledger,
-- rejected_rows, job_locks, monitoring, the output and _shadow tables) and use
-- their id sequences, now and for tables the owner creates later. No TRUNCATE,
-- no DDL. The registry is taken back to read-only below.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA :"schema" TO :"scorer";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA :"schema" TO :"scorer";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"scorer";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
    GRANT USAGE, SELECT ON SEQUENCES TO :"scorer";

-- The model registry's tables (those that exist yet: init-db creates them) and
-- their id sequences. The scorer may only read them.
CREATE TEMPORARY TABLE batch_scorer_registry (table_name text PRIMARY KEY, deployer text NOT NULL);
INSERT INTO batch_scorer_registry VALUES
    ('model_versions', 'SELECT, INSERT'),
    ('model_aliases', 'SELECT, INSERT, UPDATE'),
    ('model_alias_events', 'SELECT, INSERT');
CREATE TEMPORARY VIEW batch_scorer_registry_sequences AS
SELECT pg_get_serial_sequence(format('%I.%I', c.table_schema, c.table_name), c.column_name) AS seq
FROM information_schema.columns c JOIN batch_scorer_registry r USING (table_name)
WHERE c.table_schema = :'schema'
  AND pg_get_serial_sequence(format('%I.%I', c.table_schema, c.table_name), c.column_name) IS NOT NULL;

SELECT format('REVOKE ALL ON %I.%I FROM %I', t.table_schema, t.table_name, r)
FROM information_schema.tables t JOIN batch_scorer_registry USING (table_name),
     unnest(ARRAY[:'scorer', :'deployer']) AS r
WHERE t.table_schema = :'schema'
\gexec
SELECT format('REVOKE ALL ON SEQUENCE %s FROM %I', seq, :'scorer') FROM batch_scorer_registry_sequences
\gexec
SELECT format('GRANT SELECT ON %I.%I TO %I', t.table_schema, t.table_name, :'scorer')
FROM information_schema.tables t JOIN batch_scorer_registry USING (table_name)
WHERE t.table_schema = :'schema'
\gexec

-- Deployer: register and promote models, nothing else.
SELECT format('GRANT %s ON %I.%I TO %I', r.deployer, t.table_schema, t.table_name, :'deployer')
FROM information_schema.tables t JOIN batch_scorer_registry r USING (table_name)
WHERE t.table_schema = :'schema'
\gexec
SELECT format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I', seq, :'deployer') FROM batch_scorer_registry_sequences
\gexec
-- ... and a version's reference profile (models register --reference), in feature_profiles.
SELECT format('GRANT SELECT, INSERT ON %I.%I TO %I', table_schema, table_name, :'deployer')
FROM information_schema.tables WHERE table_schema = :'schema' AND table_name = 'feature_profiles'
\gexec
SELECT format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I',
              pg_get_serial_sequence(format('%I.feature_profiles', :'schema'), 'id'), :'deployer')
WHERE EXISTS (SELECT 1 FROM information_schema.tables
              WHERE table_schema = :'schema' AND table_name = 'feature_profiles')
\gexec

-- Owner and scorer: read the feature tables (and only read them). Skipped, with a
-- note, while the feature schema does not exist: run this file again once it does.
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :'feature_schema') AS feature_schema_exists
\gset
\if :feature_schema_exists
-- (The deployer reads them too: promote checks a version against each job's source.)
GRANT USAGE ON SCHEMA :"feature_schema" TO :"owner", :"scorer", :"deployer";
GRANT SELECT ON ALL TABLES IN SCHEMA :"feature_schema" TO :"owner", :"scorer", :"deployer";
\else
\echo 'NOTE: the feature schema' :'feature_schema' 'does not exist yet; its grants were skipped. Run this file again once it exists.'
\endif

-- Reader: SELECT on every table and view in the tool's schema except the private
-- ones (the raw ledger, rejected_rows, job_locks); model_versions without its
-- artifact column (the pickled model).
SELECT format('GRANT SELECT ON %I.%I TO %I', table_schema, table_name, :'reader')
FROM information_schema.tables
WHERE table_schema = :'schema'
  AND table_name NOT IN ('scoring_runs', 'rejected_rows', 'job_locks', 'model_versions')
\gexec
REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"schema" FROM :"reader";
SELECT format('REVOKE ALL ON %I.%I FROM %I', table_schema, table_name, :'reader')
FROM information_schema.tables
WHERE table_schema = :'schema'
  AND table_name IN ('scoring_runs', 'rejected_rows', 'job_locks', 'model_versions')
\gexec
SELECT format('GRANT SELECT (name, version, sha256, format, sklearn_version, estimator_class, kind, '
              'features, note, registered_at, registered_by) ON %I.%I TO %I',
              table_schema, table_name, :'reader')
FROM information_schema.tables
WHERE table_schema = :'schema' AND table_name = 'model_versions'
\gexec

DROP VIEW batch_scorer_registry_sequences;
DROP TABLE batch_scorer_registry;
