"""End-to-end tests against real servers (Prometheus, Chromium, Redis)."""
