"""The saga coordinator's shared contract: the wire envelope and the definition format.

This package is the only code that the coordinator and the participant SDK share: the
contract, and one helper both use, ``batching.GroupCommit`` (the group commit of their
database writes). The YAML saga definitions and the generated JSON Schema of the format
live beside it.
"""
