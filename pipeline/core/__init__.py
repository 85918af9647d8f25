"""The pure core: hashing, trees, proofs, JCS, reward arithmetic, and the formats anchorlake
writes, each beside its validating reader. Bytes and numbers in, bytes and numbers out: no lake,
no chain, no environment, no pyarrow, boto3, web3 or Great Expectations."""
