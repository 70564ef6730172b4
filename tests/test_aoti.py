"""AOTInductor (issue fused-chain item 1: "torch.export and AOTInductor packages work with it"):
an exported model of KSLinear layers (ks::chain with bias and a folded activation, and a single
factor) compiles into a .pt2 package, loads, and matches eager for batch sizes it was not traced
with. About 25 s on 2 CPU cores (a C++ compile)."""
import torch

from ks_ops import KSLinear


def test_aoti_package_of_ks_layers(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(KSLinear([(6, 8, 8, 1), (1, 16, 12, 4)], activation="gelu"),
                                KSLinear([(4, 16, 16, 1)]))
    ep = torch.export.export(model, (torch.randn(5, 48),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=2, max=1024)},))
    assert any(n.target is torch.ops.ks.chain.default for n in ep.graph.nodes)
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "ks.pt2"))
    runner = torch._inductor.aoti_load_package(path)
    for batch in (3, 77):
        x = torch.randn(batch, 48)
        torch.testing.assert_close(runner(x), model(x), rtol=1e-5, atol=1e-6)
