"""Tools for development and demonstration: simulated sites, a private Mosquitto, the demo, the live UI (not needed in production)."""
