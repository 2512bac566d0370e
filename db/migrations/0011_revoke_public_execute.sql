/*
 * 0011 — PUBLIC executes nothing of ours.
 *
 * PostgreSQL grants EXECUTE on new functions to PUBLIC by a global default, and a per-schema
 * ALTER DEFAULT PRIVILEGES (as in 0001) can only add to the global defaults, never remove:
 * that revoke was a no-op. The internals in schema tokenbill were still unreachable (PUBLIC
 * has no USAGE on the schema) but must not depend on that alone. Revoke what exists and change
 * the global default for functions the migration owner creates from now on.
 * tests/db/test_privileges.py keeps it that way.
 */

alter default privileges revoke execute on functions from public;
revoke execute on all functions in schema tokenbill from public;
revoke execute on all functions in schema api from public;
