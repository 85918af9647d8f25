"""The lake: the only code that knows keys and bytes at rest (SPEC §3).

`storage` talks to file:// and s3://, `layout` spells every key, `batch.BatchFiles` is every read
and write of a batch's files, `sources` the drop zone and staged sources, `records` the tagged
records, `lease` the commit lease."""
