"""A CPU weight-transfer engine for vLLM's RL weight-sync API, over a gloo process group.

vLLM ships NCCL and CUDA-IPC engines; neither runs on CPU. This module adds a `gloo` engine
with the same life cycle (`init_weight_transfer_engine` -> `start_weight_update` ->
`update_weights` -> `finish_weight_update`) and registers it in vLLM's
`WeightTransferEngineFactory` / `WeightTransferTrainerFactory` under the name ``gloo``.

Registration runs in every vLLM process through the ``vllm.general_plugins`` entry point
declared in pyproject.toml (`register`), so the engine exists inside vLLM's worker processes too.

Wire format: the trainer (rank 0 of a dedicated gloo group; vLLM workers follow at
``rank_offset``) streams one flat byte buffer per *layer group* (`layerwise_groups`: the
embeddings, each decoder layer, the head). A layer is gathered, sent and loaded as a unit,
so neither side ever materialises more than one layer beyond its own copy of the model.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
    layerwise_groups,
)

BACKEND = "gloo"
_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass
class GlooWorkerInitInfo(WeightTransferInitInfo):
    """What a vLLM worker needs to join the transfer group (sent by the trainer)."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer side: the group's rendezvous and size (1 trainer sender + every vLLM worker)."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


def _open_group(address: str, port: int, rank: int, world_size: int) -> dist.ProcessGroup:
    """A gloo group outside torch.distributed's global state (vLLM and DeepSpeed own that)."""
    store = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=_TIMEOUT)
    store = dist.PrefixStore("rl_safety_weight_sync", store)
    return dist.ProcessGroupGloo(store, rank, world_size, _TIMEOUT)


def _broadcast(group: dist.ProcessGroup, buffer: torch.Tensor) -> None:
    options = dist.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([buffer], options).wait()


def _pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors])


def _unpack(buffer: torch.Tensor, metas: list[ParamMeta]) -> list[torch.Tensor]:
    out, offset = [], 0
    for meta in metas:
        nbytes = meta.dtype.itemsize * _numel(meta.shape)
        out.append(buffer[offset : offset + nbytes].view(meta.dtype).reshape(meta.shape))
        offset += nbytes
    return out


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _group_metas(metas: list[ParamMeta]) -> list[list[ParamMeta]]:
    by_name = {m.name: m for m in metas}
    return [[by_name[n] for n in group] for group in layerwise_groups([m.name for m in metas])]


class GlooWeightTransferEngine(WeightTransferEngine[GlooWorkerInitInfo, GlooUpdateInfo]):
    """Worker side (inside vLLM): receive layer buffers and load them with layerwise reload."""

    init_info_cls = GlooWorkerInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: dist.ProcessGroup | None = None

    def init_transfer_engine(self, init_info: GlooWorkerInitInfo) -> None:
        # One engine per vLLM worker; TP workers of an engine take consecutive ranks.
        rank = init_info.rank_offset + self.parallel_config.rank
        self.group = _open_group(
            init_info.master_address, init_info.master_port, rank, init_info.world_size
        )

    def start_weight_update(self) -> None:
        # vLLM's CPU linear layers keep only a prepacked copy of their weight (oneDNN/sgl
        # kernels), so an in-place copy into `.weight` would be ignored: reload layerwise,
        # which restores the parameters and re-runs the packing in `finish_weight_update`.
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        self._retie_lm_head()

    def _retie_lm_head(self) -> None:
        """With tied embeddings the checkpoint has no lm_head weight, so layerwise reload reports
        the head as "failed to load" and puts back its *old* tensor (and old packed GEMM handle):
        rollouts would sample from a stale head while the embedding is new. Re-tie the head to
        the new embedding and re-run its post-load processing (the CPU GEMM packing)."""
        if not getattr(self.model_config.hf_text_config, "tie_word_embeddings", False):
            return
        modules = dict(self.model.named_modules())
        lm_head = modules.get("lm_head")
        embed = next((m for name, m in modules.items() if name.endswith("embed_tokens")), None)
        if lm_head is None or embed is None or lm_head is embed:
            return
        lm_head.weight = embed.weight
        lm_head.quant_method.process_weights_after_loading(lm_head)

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer used before init_weight_transfer_engine")
        metas = [
            ParamMeta(name, getattr(torch, dtype), tuple(shape))
            for name, dtype, shape in zip(
                update_info.names, update_info.dtype_names, update_info.shapes, strict=True
            )
        ]
        for group in _group_metas(metas):
            nbytes = sum(m.dtype.itemsize * _numel(m.shape) for m in group)
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            _broadcast(self.group, buffer)
            tensors = _unpack(buffer, group)
            self.model.load_weights([(m.name, t) for m, t in zip(group, tensors, strict=True)])

    def shutdown(self) -> None:
        self.group = None


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side. Every learner rank calls `send_weights` (a ZeRO-3 source gathers a layer
    with a collective on all ranks); only rank 0 talks to vLLM and broadcasts."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source, is_sender: bool = True) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.group: dist.ProcessGroup | None = None

    @classmethod
    def trainer_init(
        cls,
        init_info: GlooTrainerInitInfo,
        *,
        client: VLLMWeightSyncClient,
        source: WeightSource | None = None,
    ) -> GlooTrainerWeightTransferEngine:
        if source is None:
            raise ValueError("gloo weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        if not engine.is_sender:
            return engine
        # The trainer's store binds first (port 0: any free port), so no other process can take
        # the port between choosing it and listening on it; workers then get the real port.
        store = dist.TCPStore(init_info.master_address, init_info.master_port, init_info.world_size,
                              is_master=True, timeout=_TIMEOUT, wait_for_workers=False)
        # rank_offset 1 is the first engine's; `PerEngineClient` shifts it for the others.
        worker_info = asdict(
            GlooWorkerInitInfo(
                master_address=init_info.master_address,
                master_port=store.port,
                rank_offset=1,
                world_size=init_info.world_size,
            )
        )
        # Workers block in the rendezvous until every rank joins: run both sides at once. On an
        # error, never wait for the workers' call (it would block forever): raise at once.
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            pending = pool.submit(engine.client.init_weight_transfer_engine, worker_info)
            engine.group = dist.ProcessGroupGloo(
                dist.PrefixStore("rl_safety_weight_sync", store), 0, init_info.world_size, _TIMEOUT
            )
            pending.result()
        finally:
            pool.shutdown(wait=False)
        return engine

    def send_weights(self) -> None:
        assert self.source is not None
        metas = self.source.metadata()
        if not self.is_sender:
            for _ in self.source.iter_groups():  # join the gathers, send nothing
                pass
            return
        update = GlooUpdateInfo(
            names=[m.name for m in metas],
            dtype_names=[str(m.dtype).removeprefix("torch.") for m in metas],
            shapes=[list(m.shape) for m in metas],
        )
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            receiving = pool.submit(self.client.update_weights, asdict(update))
            for names, tensors in _checked_groups(self.source, metas):
                assert self.group is not None
                _broadcast(self.group, _pack(tensors))
            receiving.result()
        finally:
            # If a broadcast failed the workers are stuck in theirs; do not join them.
            pool.shutdown(wait=False)
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = None


def _checked_groups(
    source: WeightSource, metas: list[ParamMeta]
) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """The source's layer groups, checked against the metadata the workers were sent: a
    mismatch would make the two sides cut the byte stream differently and load garbage."""
    expected_groups = _group_metas(metas)
    produced = 0
    for (names, tensors), expected in zip(source.iter_groups(), expected_groups, strict=True):
        for name, tensor, meta in zip(names, tensors, expected, strict=True):
            if name != meta.name or tensor.dtype != meta.dtype or tuple(tensor.shape) != meta.shape:
                raise ValueError(
                    f"weight source disagrees with its metadata: declared {meta.name} "
                    f"{meta.dtype} {meta.shape}, produced {name} {tensor.dtype} "
                    f"{tuple(tensor.shape)}"
                )
        produced += 1
        yield names, tensors
    if produced != len(expected_groups):
        raise ValueError(f"weight source produced {produced} of {len(expected_groups)} groups")


def trainer_init_info(backend: str, *, rank: int, master_address: str, master_port: int,
                      world_size: int) -> TrainerInitInfo:
    """The learner rank's init info for `backend` (`cluster.weight_sync_transport`): a group
    rendezvous for gloo and NCCL; none for CUDA IPC, whose transfers are packed into bounded
    buffers (unpacked, every rank would hold a second full copy of the model until the sync ends)."""
    if backend == BACKEND:
        return GlooTrainerInitInfo(master_address=master_address, master_port=master_port, world_size=world_size,
                                   rank=rank)
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(master_address=master_address, master_port=master_port, world_size=world_size,
                                   rank=rank)
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(rank=rank, packed=True)
    raise ValueError(f"unknown weight-sync backend {backend!r} (gloo, nccl, ipc)")


class PerEngineClient:
    """`VLLMWeightSyncClient` over rollout Ray actors, for every backend.

    vLLM's trainer engines address a single inference deployment (its workers at rank_offset 1).
    With several independent engines in one transfer group (gloo, NCCL), engine i's workers must
    start at their own offset: `rank_offsets[i]` (1 + i x tensor_parallel_size). CUDA IPC has no
    group (None): every engine gets the same handles and each worker opens its own GPU's."""

    def __init__(self, handles: list[Any], rank_offsets: list[int] | None) -> None:
        self.handles = handles
        self.rank_offsets = rank_offsets

    def _all(self, method: str, *args: Any) -> None:
        import ray

        ray.get([getattr(h, method).remote(*args) for h in self.handles])

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        import ray

        if self.rank_offsets is None:
            self._all("init_weight_transfer_engine", init_info)
            return
        ray.get([
            handle.init_weight_transfer_engine.remote({**init_info, "rank_offset": offset})
            for handle, offset in zip(self.handles, self.rank_offsets, strict=True)
        ])

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        self._all("update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")


def register() -> None:
    """vLLM general-plugin hook: make the ``gloo`` engine known in this process."""
    from vllm.distributed.weight_transfer import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, GlooTrainerWeightTransferEngine)
