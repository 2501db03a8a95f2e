"""The UserCounter Kubernetes operator."""
