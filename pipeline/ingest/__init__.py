"""Incoming files -> one committed batch: stage (freeze sources), parse, quality (Great
Expectations), dedupe, builder (parts, index, quarantine), ledger (the batch's rewards) and
commit (lease -> builder -> tree -> ledger -> manifest)."""
