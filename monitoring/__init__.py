"""The monitoring bundle: a Grafana dashboard and Prometheus alert rules for vendorguard's
metrics, shipped in the package so ``vendorguard monitoring export DIR`` can write it out."""
