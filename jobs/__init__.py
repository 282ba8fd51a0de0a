"""The shared contract of mlq: job kinds and schemas, statuses, settings,
errors, tables, store functions and migrations. Imports nothing of ours."""
