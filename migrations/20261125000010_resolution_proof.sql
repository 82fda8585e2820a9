-- How the resolution of a binding was proven: `admin` for the admin API, or what the person
-- proved ownership with (a command's `proof`).
ALTER TABLE bindings ADD COLUMN resolution_proof text;
