"""A second implementation of the seedswarm protocol, written only from protocol/SPEC.md.

It imports nothing of seedswarm (only the standard library, msgpack-free code of its own,
and ``cryptography`` for Ed25519), so tests/test_spec_independent.py can check that the
spec alone determines every byte: see that test for what is compared.
"""
