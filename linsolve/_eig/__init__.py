"""Eigenpairs of symmetric operators and pencils: `lobpcg` (a few extreme eigenpairs,
iterative, derivatives from projected linear solves) and `eigh` (dense, all eigenpairs),
both returning `Eigenpairs`."""

from .dense_eigh import eigh as eigh
from .lobpcg_iteration import Eigenpairs as Eigenpairs, lobpcg as lobpcg
