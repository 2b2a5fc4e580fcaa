"""The engine owns torch and the device. Everything here is synchronous and is called from
one dedicated thread (see runtime/), so no locking is needed around models or caches."""
