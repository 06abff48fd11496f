-- Least-privilege roles for batch-scorer on PostgreSQL (README: "Least privilege").
--
--   owner   runs `batch-scorer init-db`: owns the tool's tables, the output
--           tables and their _latest views. Nothing else needs CREATE.
--   scorer  runs `batch-scorer run` / cron / the daemon: reads the feature
--           tables, reads and writes the tool's tables; cannot create anything.
--   reader  the BI login (Power BI, notebooks): SELECT on the output tables and
--           views only; not the ledger, not rejected_rows, not the features.
--
-- Run it as a superuser (or a role with CREATEROLE that is a member of owner),
-- with psql variables naming the roles and schemas:
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 \
--        -v owner=batch_scorer_owner -v scorer=batch_scorer -v reader=batch_scorer_bi \
--        -v schema=scoring -v feature_schema=features \
--        -f sql/roles_postgresql.sql
--
-- Order: run this file, then `batch-scorer init-db` as the owner, then this file
-- again. It is idempotent. The second run grants the reader SELECT on the output
-- tables and views init-db made: the reader gets no default privileges, so a
-- table added later stays hidden from BI (never over-granted) until this file
-- runs again. The scorer gets default privileges, so it can write new output
-- tables at once.
--
-- Roles are created with LOGIN and no password; set one without putting it in
-- a file or your shell history:  \password batch_scorer
-- The jobs' config then uses e.g. url: postgresql://batch_scorer@db/prod?options=-csearch_path%3Dscoring
-- with the password in PGPASSWORD or ~/.pgpass.

\set ON_ERROR_STOP on

-- Roles (skipped when they exist).
SELECT format('CREATE ROLE %I LOGIN', r)
FROM unnest(ARRAY[:'owner', :'scorer', :'reader']) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)
\gexec

-- The tool's schema: only the owner may create in it.
SELECT format('CREATE SCHEMA %I AUTHORIZATION %I', :'schema', :'owner')
WHERE NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :'schema')
\gexec
GRANT USAGE, CREATE ON SCHEMA :"schema" TO :"owner";
REVOKE CREATE ON SCHEMA :"schema" FROM PUBLIC;
REVOKE CREATE ON SCHEMA :"schema" FROM :"scorer", :"reader";
GRANT USAGE ON SCHEMA :"schema" TO :"scorer", :"reader";

-- Scorer: read and write rows of every table in the tool's schema (scoring_runs,
-- rejected_rows, job_locks, the output tables), use their id sequences, now and
-- for tables the owner creates later. No TRUNCATE, no DDL.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA :"schema" TO :"scorer";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA :"schema" TO :"scorer";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"scorer";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
    GRANT USAGE, SELECT ON SEQUENCES TO :"scorer";

-- Scorer: read the feature tables (and only read them).
GRANT USAGE ON SCHEMA :"feature_schema" TO :"scorer";
GRANT SELECT ON ALL TABLES IN SCHEMA :"feature_schema" TO :"scorer";

-- Reader: SELECT on the output tables and their views, nothing else. Every
-- table in the tool's schema except the tool's own three is an output table.
SELECT format('GRANT SELECT ON %I.%I TO %I', table_schema, table_name, :'reader')
FROM information_schema.tables
WHERE table_schema = :'schema'
  AND table_name NOT IN ('scoring_runs', 'rejected_rows', 'job_locks')
\gexec
REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"schema" FROM :"reader";
SELECT format('REVOKE ALL ON %I.%I FROM %I', table_schema, table_name, :'reader')
FROM information_schema.tables
WHERE table_schema = :'schema'
  AND table_name IN ('scoring_runs', 'rejected_rows', 'job_locks')
\gexec
