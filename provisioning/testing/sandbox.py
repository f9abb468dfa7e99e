"""The sandbox's host layout, for tests of a plugin that provisions a host like the sandbox does.

What plugins' test helpers use of provisioning.sandbox, through provisioning.testing
(the only parts of the core besides provisioning.api a plugin may import).
"""
from provisioning.sandbox.layout import REPO, SandboxLayout, global_sections, service_sections, write_recorder

__all__ = ["REPO", "SandboxLayout", "global_sections", "service_sections", "write_recorder"]
