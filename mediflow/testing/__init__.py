"""Test tooling shipped with the library: the OpenAI-compatible test teacher server and its launcher."""

from mediflow.testing.server_process import TeacherServerURL, teacher_server

__all__ = ["TeacherServerURL", "teacher_server"]
