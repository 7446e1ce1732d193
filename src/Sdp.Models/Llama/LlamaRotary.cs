using Sdp.Engine;

namespace Sdp.Models.Llama;

/// <summary>
/// The rotary cos/sin tables (T, head_dim) for one forward call, shared by every layer; position of token t is t.
/// </summary>
public readonly record struct LlamaRotary(Tensor Cos, Tensor Sin);
