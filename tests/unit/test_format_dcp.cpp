// The torch.distributed.checkpoint `.metadata` reader: metadata pickles built here (through pickle::write, as the
// dataclasses pickle: NEWOBJ then BUILD with their fields), hostile ones among them, and two written by Python
// (tests/data/fsdp).
#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <variant>
#include <string>
#include <vector>

#include "bytes.hpp"
#include "format/dcp.hpp"
#include "format/pickle.hpp"
#include "format/pickle_writer.hpp"
#include "util/error.hpp"

using namespace ckpt;
using pickle::Kind;
using pickle::NodeId;

namespace {

struct ChunkSpec {
  std::vector<std::int64_t> offsets;
  std::vector<std::int64_t> sizes;
  std::string file = "__0_0.distcp";
  std::int64_t offset = 0;
  std::int64_t length = 100;
};

struct TensorSpec {
  std::string fqn;
  std::string dtype = "float32";
  std::vector<std::int64_t> size;
  std::vector<ChunkSpec> chunks;
};

// Builds the pickle of a torch 2.x Metadata holding `tensors` and a blob "extra" (when `blob`), after `edit` has
// had its say on the storage_data pairs (keys and values as built).
class MetadataBuilder {
 public:
  std::string build(const std::vector<TensorSpec>& tensors, bool blob = false,
                    const std::function<void(MetadataBuilder&, std::vector<NodeId>&)>& edit = {}) {
    std::vector<NodeId> entries;
    std::vector<NodeId> storage;
    for (const TensorSpec& t : tensors) {
      std::vector<NodeId> chunks;
      for (std::size_t c = 0; c < t.chunks.size(); ++c) {
        const ChunkSpec& chunk = t.chunks[c];
        chunks.push_back(
            object("ChunkStorageMetadata", dict({"offsets", size(chunk.offsets), "sizes", size(chunk.sizes)})));
        storage.push_back(index(t.fqn, size(chunk.offsets), static_cast<std::int64_t>(c)));
        storage.push_back(info(chunk.file, chunk.offset, chunk.length));
      }
      const NodeId properties = object("TensorProperties", tuple({global("torch", t.dtype), global("torch", "strided"),
                                                                  boolean(false), integer(0), boolean(false)}));
      entries.push_back(str(t.fqn));
      entries.push_back(object("TensorStorageMetadata",
                               dict({"properties", properties, "size", size(t.size), "chunks", list(chunks)})));
    }
    if (blob) {
      entries.push_back(str("extra"));
      entries.push_back(object("BytesStorageMetadata", g.none()));
      storage.push_back(object("MetadataIndex", dict({"fqn", str("extra"), "index", g.none()})));
      storage.push_back(info("__0_0.distcp", 500, 20));
    }
    if (edit) edit(*this, storage);
    const NodeId root = object("Metadata", dict({"state_dict_metadata", raw_dict(entries), "planner_data", g.none(),
                                                 "storage_data", raw_dict(storage)}));
    return pickle::write(g, root);
  }

  NodeId add(Kind kind, std::vector<NodeId> items = {}) {
    pickle::Node n;
    n.kind = kind;
    n.items = std::move(items);
    return g.add(std::move(n));
  }
  NodeId str(const std::string& text) {
    const NodeId id = add(Kind::string);
    g.at(id).text = text;
    return id;
  }
  NodeId integer(std::int64_t value) {
    const NodeId id = add(Kind::integer);
    g.at(id).integer = value;
    return id;
  }
  NodeId boolean(bool value) {
    const NodeId id = add(Kind::boolean);
    g.at(id).flag = value;
    return id;
  }
  NodeId global(const std::string& module, const std::string& name) {
    const NodeId id = add(Kind::global);
    g.at(id).text = module + "\n" + name;
    return id;
  }
  NodeId tuple(std::vector<NodeId> items) { return add(Kind::tuple, std::move(items)); }
  NodeId list(std::vector<NodeId> items) { return add(Kind::list, std::move(items)); }
  NodeId raw_dict(std::vector<NodeId> items) { return add(Kind::dict, std::move(items)); }
  // A dict from alternating field names and values, the names given as C strings.
  NodeId dict(std::initializer_list<std::variant<const char*, NodeId>> fields) {
    std::vector<NodeId> items;
    for (const auto& f : fields)
      items.push_back(std::holds_alternative<NodeId>(f) ? std::get<NodeId>(f) : str(std::get<const char*>(f)));
    return raw_dict(std::move(items));
  }
  // torch.Size(dims): GLOBAL torch Size, REDUCE with the tuple of dims.
  NodeId size(const std::vector<std::int64_t>& dims) {
    std::vector<NodeId> items;
    for (std::int64_t d : dims) items.push_back(integer(d));
    return call(global("torch", "Size"), tuple({tuple(items)}), false, g.none());
  }
  NodeId call(NodeId callable, NodeId args, bool newobj, NodeId state) {
    const NodeId id = add(Kind::object, {callable, args, state, g.none(), g.none()});
    g.at(id).flag = newobj;
    return id;
  }
  NodeId object(const std::string& cls, NodeId state,
                const std::string& module = "torch.distributed.checkpoint.metadata") {
    return call(global(module, cls), tuple({}), true, state);
  }
  NodeId index(const std::string& fqn, NodeId offset, std::int64_t hint) {
    return object("MetadataIndex", dict({"fqn", str(fqn), "index", integer(hint), "offset", offset}));
  }
  NodeId info(const std::string& file, std::int64_t offset, std::int64_t length) {
    return object("_StorageInfo",
                  dict({"relative_path", str(file), "offset", integer(offset), "length", integer(length)}),
                  "torch.distributed.checkpoint.filesystem");
  }

  pickle::Graph g;
};

dcp::Metadata parse(const std::string& bytes) { return dcp::parse_metadata(test::as_bytes(bytes)); }

// The error parsing `bytes` throws (FAILs when none).
Error error_of(const std::string& bytes) {
  try {
    parse(bytes);
  } catch (const Error& e) {
    return e;
  }
  FAIL("expected an error");
  return Error(ErrorKind::io, "", "", "");
}

std::string build(const std::vector<TensorSpec>& tensors, bool blob = false,
                  const std::function<void(MetadataBuilder&, std::vector<NodeId>&)>& edit = {}) {
  return MetadataBuilder().build(tensors, blob, edit);
}

TensorSpec rows(const std::string& fqn, std::int64_t n, std::int64_t width, std::vector<std::int64_t> cuts) {
  TensorSpec t{fqn, "float32", {n, width}, {}};
  std::int64_t start = 0;
  for (std::size_t r = 0; r < cuts.size(); ++r) {
    t.chunks.push_back({{start, 0}, {cuts[r], width}, "__" + std::to_string(r) + "_0.distcp", 0, 100});
    start += cuts[r];
  }
  return t;
}

}  // namespace

TEST_CASE("dcp: tensors cut along dimension 0, a scalar and a blob") {
  TensorSpec scalar{"step", "int64", {}, {{{}, {}, "__0_0.distcp", 300, 50}}};
  const auto md = parse(build({rows("w", 7, 3, {3, 3, 1}), scalar}, true));
  REQUIRE(md.items.size() == 3);
  const dcp::Item& w = md.items[0];
  CHECK(w.fqn == "w");
  CHECK_FALSE(w.is_bytes);
  CHECK(w.dtype == DType::float32);
  CHECK(w.size == std::vector<std::int64_t>{7, 3});
  CHECK(w.numel == 21);
  REQUIRE(w.chunks.size() == 3);
  CHECK(w.chunks[2].offsets == std::vector<std::int64_t>{6, 0});
  CHECK(w.chunks[2].numel == 3);
  CHECK(w.chunks[2].storage.relative_path == "__2_0.distcp");
  const auto runs = dcp::row_major_runs(w, 10);
  REQUIRE(runs.size() == 3);
  CHECK((runs[1].chunk == 1 && runs[1].first == 0 && runs[1].count == 9));
  CHECK(md.items[1].dtype == DType::int64);
  CHECK(md.items[1].numel == 1);
  CHECK(md.items[1].chunks[0].storage.offset == 300);
  CHECK(dcp::row_major_runs(md.items[1], 10).size() == 1);
  CHECK(md.items[2].is_bytes);
  CHECK(md.items[2].storage.offset == 500);
  CHECK(md.items[2].storage.length == 20);
  CHECK(md.version.empty());
}

TEST_CASE("dcp: chunks cut along dimension 1 give a run per row and chunk; empty chunks give none") {
  TensorSpec t{"m", "bfloat16", {2, 4}, {{{0, 0}, {2, 2}}, {{0, 2}, {2, 2}}, {{2, 0}, {0, 4}}}};
  const auto md = parse(build({t}));
  const auto runs = dcp::row_major_runs(md.items[0], 10);
  REQUIRE(runs.size() == 4);
  CHECK((runs[0].chunk == 0 && runs[0].first == 0 && runs[0].count == 2));
  CHECK((runs[1].chunk == 1 && runs[1].first == 0 && runs[1].count == 2));
  CHECK((runs[2].chunk == 0 && runs[2].first == 2 && runs[2].count == 2));
  CHECK((runs[3].chunk == 1 && runs[3].first == 2 && runs[3].count == 2));
  CHECK_THROWS_AS(dcp::row_major_runs(md.items[0], 3), Error);
  CHECK(md.items[0].dtype == DType::bfloat16);
}

TEST_CASE("dcp: metadata pickled by Python, as torch 2.2-2.4 and as newer torch write it") {
  const auto older = parse(test::read_file(test::data_path("fsdp/checkpoint-5/pytorch_model_fsdp_0/.metadata")));
  REQUIRE(older.items.size() == 7);
  CHECK(older.items[0].fqn == "model.embed.weight");
  CHECK(older.items[0].size == std::vector<std::int64_t>{10, 6});
  REQUIRE(older.items[0].chunks.size() == 3);
  CHECK(older.items[0].chunks[2].sizes == std::vector<std::int64_t>{2, 6});
  CHECK(older.items[0].chunks[2].storage.relative_path == "__2_0.distcp");
  CHECK(older.items[4].fqn == "model.scale");
  CHECK(older.items[4].chunks.size() == 2);  // one element on rank 0, an empty chunk at offset 1
  CHECK(older.version.empty());

  const auto newer = parse(test::read_file(test::data_path("fsdp/newer-bf16-x2.metadata")));
  CHECK(newer.version == "1.0.0");
  REQUIRE(newer.items.size() == 7);
  CHECK(newer.items[0].dtype == DType::bfloat16);

  const auto optimizer = parse(test::read_file(test::data_path("fsdp/checkpoint-5/optimizer_0/.metadata")));
  CHECK(optimizer.items.back().fqn == "optimizer.param_groups");
  CHECK(optimizer.items.back().is_bytes);
  CHECK(optimizer.items[0].fqn == "optimizer.state.embed.weight.step");
  CHECK(optimizer.items[0].size.empty());
}

TEST_CASE("dcp: hostile chunks and sizes are refused, naming the entry") {
  auto check = [](const std::vector<TensorSpec>& tensors, ErrorKind kind, const std::string& where_part) {
    const Error e = error_of(build(tensors));
    CHECK(e.kind() == kind);
    CHECK(e.where().find(where_part) != std::string::npos);
  };
  // Element counts that overflow 64 bits.
  check({TensorSpec{"big", "float32", {std::int64_t(1) << 62, std::int64_t(1) << 62}, {}}}, ErrorKind::corrupt,
        "'big'");
  // A chunk reaching past the tensor, overlapping chunks, a gap, a chunk of the wrong rank.
  check({TensorSpec{"w", "float32", {4}, {{{0}, {2}}, {{2}, {3}}}}}, ErrorKind::corrupt, "'w' chunk 1");
  check({TensorSpec{"w", "float32", {4}, {{{0}, {3}}, {{2}, {2}}}}}, ErrorKind::corrupt, "'w'");
  check({TensorSpec{"w", "float32", {2, 4}, {{{0, 0}, {2, 3}}, {{1, 2}, {1, 2}}}}}, ErrorKind::corrupt, "'w'");
  check({TensorSpec{"w", "float32", {4}, {{{0}, {2}}}}}, ErrorKind::corrupt, "'w'");
  check({TensorSpec{"w", "float32", {4}, {{{0, 0}, {4, 1}}}}}, ErrorKind::corrupt, "'w' chunk 0");
  // Negative sizes, too many dimensions, an unknown dtype.
  check({TensorSpec{"w", "float32", {-4}, {}}}, ErrorKind::corrupt, "'w'");
  check({TensorSpec{"w", "float32", std::vector<std::int64_t>(65, 1), {}}}, ErrorKind::unsupported, "'w'");
  check({TensorSpec{"w", "qint8", {1}, {{{0}, {1}}}}}, ErrorKind::unsupported, "'w'");
  // Two chunks at the same offsets cannot each have their storage item.
  check({TensorSpec{"w", "float32", {0}, {{{0}, {0}}, {{0}, {0}}}}}, ErrorKind::corrupt, "'w'");
}

TEST_CASE("dcp: storage items escaping the directory, overflowing, missing, extra or transformed are refused") {
  auto path_of = [](const std::string& file) { return build({TensorSpec{"w", "float32", {2}, {{{0}, {2}, file}}}}); };
  CHECK(error_of(path_of("../__0_0.distcp")).kind() == ErrorKind::corrupt);
  CHECK(error_of(path_of("sub/__0_0.distcp")).kind() == ErrorKind::corrupt);
  CHECK(error_of(path_of("..")).kind() == ErrorKind::corrupt);
  CHECK(error_of(path_of("")).kind() == ErrorKind::corrupt);
  CHECK(error_of(path_of(std::string("a\0b", 3))).kind() == ErrorKind::corrupt);
  CHECK(error_of(path_of("../x")).detail().find("../x") != std::string::npos);

  const std::int64_t max = INT64_MAX;
  CHECK(error_of(build({TensorSpec{"w", "float32", {2}, {{{0}, {2}, "f", max, max}}}})).kind() == ErrorKind::corrupt);
  CHECK(error_of(build({TensorSpec{"w", "float32", {2}, {{{0}, {2}, "f", -1, 4}}}})).kind() == ErrorKind::corrupt);

  // A chunk without its storage item; a storage item for nothing.
  const Error missing =
      error_of(build({rows("w", 4, 1, {2, 2})}, false, [](MetadataBuilder&, std::vector<NodeId>& s) { s.resize(2); }));
  CHECK(missing.kind() == ErrorKind::corrupt);
  CHECK(missing.where() == "'w' chunk 1");
  const Error extra = error_of(build({rows("w", 4, 1, {4})}, false, [](MetadataBuilder& b, std::vector<NodeId>& s) {
    s.push_back(b.index("ghost", b.size({0}), 0));
    s.push_back(b.info("__0_0.distcp", 0, 1));
  }));
  CHECK(extra.kind() == ErrorKind::corrupt);
  CHECK(extra.where().find("'ghost'") != std::string::npos);

  const Error transformed =
      error_of(build({rows("w", 4, 1, {4})}, false, [](MetadataBuilder& b, std::vector<NodeId>& s) {
        auto& fields = b.g.at(b.g.at(s[1]).items[pickle::object_state]).items;
        fields.push_back(b.str("transform_descriptors"));
        fields.push_back(b.list({b.str("zstd")}));
      }));
  CHECK(transformed.kind() == ErrorKind::unsupported);
}

TEST_CASE("dcp: classes outside the DCP metadata set are refused, never called") {
  const Error e = error_of(build({rows("w", 4, 1, {4})}, false, [](MetadataBuilder& b, std::vector<NodeId>& s) {
    s[1] = b.call(b.global("os", "system"), b.tuple({b.str("true")}), false, b.g.none());
  }));
  CHECK(e.kind() == ErrorKind::unsupported);
  CHECK(e.detail().find("os.system") != std::string::npos);

  MetadataBuilder b;
  const std::string not_metadata = pickle::write(b.g, b.object("Unrelated", b.raw_dict({})));
  CHECK(error_of(not_metadata).kind() == ErrorKind::unsupported);
  CHECK(error_of(std::string("\x80\x04N.", 4)).kind() == ErrorKind::corrupt);
  CHECK(error_of("not a pickle").kind() == ErrorKind::corrupt);
}

TEST_CASE("dcp: is_plain_file_name") {
  CHECK(dcp::is_plain_file_name("__0_0.distcp"));
  CHECK(dcp::is_plain_file_name("..distcp"));
  CHECK_FALSE(dcp::is_plain_file_name(""));
  CHECK_FALSE(dcp::is_plain_file_name("."));
  CHECK_FALSE(dcp::is_plain_file_name(".."));
  CHECK_FALSE(dcp::is_plain_file_name("a/b"));
  CHECK_FALSE(dcp::is_plain_file_name("/abs"));
}

TEST_CASE("dcp: huge chunk counts are refused before they are walked; a cyclic pickle is refused by the parser") {
  // One chunk node referenced kMaxChunksPerTensor + 1 times: memoised, a small pickle.
  MetadataBuilder many;
  const NodeId chunk =
      many.object("ChunkStorageMetadata", many.dict({"offsets", many.size({0}), "sizes", many.size({1})}));
  const NodeId properties =
      many.object("TensorProperties", many.tuple({many.global("torch", "float32"), many.global("torch", "strided"),
                                                  many.boolean(false), many.integer(0), many.boolean(false)}));
  const NodeId tensor = many.object("TensorStorageMetadata",
                                    many.dict({"properties", properties, "size", many.size({1}), "chunks",
                                               many.list(std::vector<NodeId>(dcp::kMaxChunksPerTensor + 1, chunk))}));
  const NodeId root =
      many.object("Metadata", many.dict({"state_dict_metadata", many.raw_dict({many.str("w"), tensor}), "planner_data",
                                         many.g.none(), "storage_data", many.raw_dict({})}));
  const Error e = error_of(pickle::write(many.g, root));
  CHECK(e.kind() == ErrorKind::unsupported);
  CHECK(e.where() == "'w'");

  // A list that contains itself (PROTO 2, EMPTY_LIST, BINPUT 0, BINGET 0, APPEND, STOP): the unpickler refuses
  // every cyclic graph as unsupported, so no walk over the metadata can loop.
  const std::string cyclic = std::string("\x80\x02]q", 4) + std::string(1, '\0') + "h" + std::string(1, '\0') + "a.";
  CHECK(error_of(cyclic).detail().find("cycle") != std::string::npos);
}

TEST_CASE("dcp: chunks that would cost quadratic work are refused, not walked for minutes") {
  // One row cut into 4096 one-element columns: every chunk starts within the first's rows, so checking them for
  // overlap pairwise would take 8 million comparisons (and 64 such tensors minutes); the budget refuses it at once.
  TensorSpec columns{"row", "float32", {1, 4096}, {}};
  for (std::int64_t k = 0; k < 4096; ++k) columns.chunks.push_back({{0, k}, {1, 1}});
  const Error e = error_of(build({columns}));
  CHECK(e.kind() == ErrorKind::unsupported);
  CHECK(e.detail().find("overlap checks") != std::string::npos);

  // Dimension-0 shards listed last to first: each search for the next run's chunk would scan them all (16 million
  // probes here, 2^31 for a tensor of the most chunks), past the budget of 64 per chunk and run.
  TensorSpec reversed{"w", "float32", {4096, 2}, {}};
  for (std::int64_t k = 4095; k >= 0; --k) reversed.chunks.push_back({{k, 0}, {1, 2}});
  const auto md = parse(build({reversed}));
  try {
    dcp::row_major_runs(md.items[0], 4096);
    FAIL("expected an error");
  } catch (const Error& e2) {
    CHECK(e2.kind() == ErrorKind::unsupported);
  }
}
