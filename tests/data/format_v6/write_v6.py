"""Writes the frozen version-6 files of this folder (see README.md); run once, never again."""
import sys

sys.path.insert(0, '/work/main')
import numpy as np

from lplr_index import LPLRIndex
from lplr_index.fileformat import FORMAT_VERSION, read_container


def main() -> None:
    assert FORMAT_VERSION == 6
    rng = np.random.default_rng(7)
    basis, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    X = ((rng.standard_normal((2000, 32)) * 0.85 ** np.arange(32)) @ basis).astype(np.float32)
    Q = (X[:12] + 0.05 * rng.standard_normal((12, 32))).astype(np.float32)
    out = '/work/main/tests/data/format_v6'
    np.save(f'{out}/queries.npy', Q)
    cases = {
      'vq_l2_b1': dict(bits_per_coordinate=1.0, metric='l2'),
      'vq2_cosine_b4_ids': dict(bits_per_coordinate=4.0, metric='cosine'),
      'scalar8_ip': dict(rank=12, bits_l=8, codec='scalar', metric='ip'),  # no fast-scan: the default depth
      'ivf_vq_l2_b1': dict(bits_per_coordinate=1.0, metric='l2', nlist=16),
    }
    for name, kw in cases.items():
        idx = LPLRIndex(32, **kw)
        if name.endswith('_ids'):
            idx.build(X, ids=np.arange(2000) * 3 + 11)
            idx.remove([11, 14])
        else:
            idx.build(X)
        idx.add(X[:5] * 1.5)
        idx.save(f'{out}/{name}.lplr')
        D, I = idx.search(Q, 5)
        Df, If = idx.search(Q, 5, mode="factored")
        Dn, In = (idx.search(Q, 5, nprobe=2) if idx.nlist else (D, I))
        R = idx.reconstruct(idx.live_ids[:40])
        np.savez(f'{out}/{name}.expected.npz', distances=D, indices=I, factored_distances=Df,
                 factored_indices=If, nprobe2_distances=Dn, nprobe2_indices=In, reconstruction=R, ids=idx.live_ids)
        head = read_container(f'{out}/{name}.lplr').header
        print(name, idx.layout, idx.nlist, idx.nprobe, head['rerank_factor'], idx.rerank_report,
              sorted(read_container(f'{out}/{name}.lplr').arrays))


if __name__ == "__main__":  # never on import (pytest's doctest collection imports it)
    main()
