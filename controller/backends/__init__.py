"""Implementations of the seams (controller.seams): `local` (subprocesses on this machine) and
`kubernetes` (objects applied with the official client).

Only controller.backends.kubernetes* import the kubernetes client, and only when used."""
