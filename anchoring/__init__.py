"""anchorlake anchoring: Solidity contracts, their build, and the one module that talks to the chain."""
