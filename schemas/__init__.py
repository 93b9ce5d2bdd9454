"""The saga coordinator's shared contract: the wire envelope and the definition format.

This package is the only code that the coordinator and the participant SDK share. The YAML
saga definitions and the generated JSON Schema of the format live beside it.
"""
