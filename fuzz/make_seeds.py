# Writes the seed corpora of fuzz/corpus/ (except weight_chunks_fuzz, whose seeds its own
# binary writes: see fuzz/weight_chunks_fuzz.cc). Run from the repository root:
#   python3 fuzz/make_seeds.py
# Needs protoc (the buffered_groups.pb seeds).
import json, os, random, struct, subprocess
root = 'fuzz/corpus'
def put(target, name, data):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    open(os.path.join(d, name), 'wb').write(data)

# tokenizer_json_fuzz: small tokenizer.json files in the shapes the loader supports.
fx = json.load(open('tests/data/tiny_bpe/tokenizer.json'))
vocab_items = list(fx['model']['vocab'].items())
byte_vocab = dict(vocab_items[:256])
def small(n_merges, merges_as_pairs, pre, norm, added, unk=None, ignore=False):
    merges = fx['model']['merges'][:n_merges]
    vocab = dict(byte_vocab)
    for i, (a, b) in enumerate(merges): vocab[a + b] = 256 + i
    # keep only a few byte tokens so the file stays small: ASCII letters, digits, Ġ, Ċ
    keep = {k: v for k, v in vocab.items() if v >= 256 or (len(k) == 1 and (k.isalnum() or k in 'ĠĊ=+.\\{}'))}
    # renumber densely
    ids = {k: i for i, k in enumerate(sorted(keep, key=lambda k: keep[k]))}
    if unk: ids.setdefault(unk, len(ids))
    m = [[a, b] if merges_as_pairs else f'{a} {b}' for a, b in merges if a in ids and b in ids and a + b in ids]
    at = [{'id': len(ids) + i, 'content': c, 'single_word': False, 'lstrip': i == 1 and added > 2,
           'rstrip': False, 'normalized': False, 'special': i != 2} for i, c in enumerate(['<|endoftext|>', '<|im_start|>', '<|im_end|>'][:added])]
    return json.dumps({'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': at,
                       'normalizer': norm, 'pre_tokenizer': pre, 'post_processor': fx['post_processor'],
                       'decoder': fx['decoder'],
                       'model': {'type': 'BPE', 'dropout': None, 'unk_token': unk, 'continuing_subword_prefix': '',
                                 'end_of_word_suffix': '', 'fuse_unk': False, 'byte_fallback': False,
                                 'ignore_merges': ignore, 'vocab': ids, 'merges': m}}, ensure_ascii=False)
bl = {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': False, 'use_regex': False}
seq = fx['pre_tokenizer']
split_str = {'type': 'Sequence', 'pretokenizers': [{'type': 'Split', 'pattern': {'String': ' '}, 'behavior': 'Isolated', 'invert': False}, bl]}
put('tokenizer_json_fuzz', 'regex_nfc_pairs.json', small(20, True, seq, {'type': 'NFC'}, 3))
put('tokenizer_json_fuzz', 'bytelevel_strings.json', small(12, False, bl, None, 1))
put('tokenizer_json_fuzz', 'split_string_unk.json', small(8, False, split_str, {'type': 'Sequence', 'normalizers': [{'type': 'NFC'}]}, 2, unk='<unk>', ignore=True))
put('tokenizer_json_fuzz', 'empty_model.json', json.dumps({'added_tokens': [], 'normalizer': None, 'pre_tokenizer': bl, 'decoder': fx['decoder'], 'model': {'type': 'BPE', 'vocab': {'a': 0}, 'merges': []}}))

# tokenizer_encode_fuzz: a flags byte, then text.
for i, (flags, text) in enumerate([(0, 'Hello, world! What is 12 + 30?'), (1, '<|im_start|>user\nSolve x^2=4<|im_end|>\n'),
        (0, '<|im_end|> inside a prompt'), (3, 'caf\u00e9 \u221a2 \U0001F600 \u4e2d\u6587'), (2, '\\boxed{\\frac{1}{2}}  \t\r\n  x'),
        (0, "it's they're I'll"), (5, 'a\xffb\xfe'), (1, '   \n\n\n   ')]):
    data = bytes([flags]) + (text.encode('latin-1') if i == 6 else text.encode())
    put('tokenizer_encode_fuzz', f'seed-{i}', data)

# safetensors_fuzz: small valid files of several dtypes, and a few broken ones.
def st(tensors, meta={'format': 'pt'}):
    header = {'__metadata__': meta} if meta is not None else {}
    blob = b''; 
    for name, dtype, shape, data in tensors:
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header).encode()
    h += b' ' * (-len(h) % 8)
    return struct.pack('<Q', len(h)) + h + blob
f32 = struct.pack('<6f', 1, 2, 3, 4, 5, 6)
put('safetensors_fuzz', 'f32_bf16_i64.safetensors', st([('a.weight', 'F32', [2, 3], f32), ('b', 'BF16', [3], b'\x80\x3f\x00\x40\x40\x40'), ('c', 'I64', [2], struct.pack('<2q', 7, -1))]))
put('safetensors_fuzz', 'f16_u8_bool.safetensors', st([('h', 'F16', [2], b'\x00\x3c\x00\x40'), ('u', 'U8', [4], b'\x01\x02\x03\x04'), ('m', 'BOOL', [2], b'\x01\x00')], meta={'format': 'pt', 'k': 'v'}))
put('safetensors_fuzz', 'scalar_empty.safetensors', st([('s', 'F64', [], struct.pack('<d', 3.5)), ('e', 'F32', [0, 4], b''), ('i', 'I32', [1], struct.pack('<i', 5))], meta=None))
put('safetensors_fuzz', 'no_tensors.safetensors', st([]))
put('safetensors_fuzz', 'overlap.safetensors', struct.pack('<Q', 88) + json.dumps({'a': {'dtype': 'U8', 'shape': [4], 'data_offsets': [0, 4]}, 'b': {'dtype': 'U8', 'shape': [2], 'data_offsets': [2, 4]}}).encode().ljust(88) + b'abcd')

# grade_math_fuzz: reference \x01 response.
cases = [('42', 'The answer is \\boxed{42}.'), ('\\frac{1}{2}', 'so we get \\boxed{0.5}'), ('2\\sqrt{2}', '\\boxed{\\sqrt{8}}'),
         ('(1,2)', 'Answer: (1, 2)'), ('[1,3)', '#### [1,3)'), ('x^2+2x+1', '\\boxed{(x+1)^2}'), ('50\\%', 'The answer is 0.5'),
         ('\\{1,2\\}', '\\boxed{\\{2,1\\}}'), ('x+y=1', '\\boxed{y+x=1}'), ('\\frac{\\pi}{2}', '\\boxed{\\pi/2}'),
         ('10!', '\\boxed{3628800}'), ('\\sin(x)^2+\\cos(x)^2', '\\boxed{1}'), ('3', '\\boxed 3 and \\fbox{4}'), ('1,2', 'answer is 1 and 2'),
         ('\\infty', '\\boxed{\\infty}'), ('-7', '\\boxed{-7.0000001}'), ('1e3', '\\boxed{1000}')]
for i, (ref, resp) in enumerate(cases):
    put('grade_math_fuzz', f'seed-{i}', ref.encode() + b'\x01' + resp.encode())

# lease_table_fuzz: operation sequences (random bytes are all valid programs).
rnd = random.Random(15)
for i in range(8):
    put('lease_table_fuzz', f'seed-{i}', bytes(rnd.randrange(256) for _ in range(64 + 48 * i)))

# checkpoint_readers_fuzz: 0 + trainer_state.json, 1 + buffered_groups.pb, 2 + manifest.json.
lease = {'items_per_epoch': 8, 'cursor': [1, 3], 'done_below_epoch': 0,
         'done': [{'epoch': 0, 'low_water': 5, 'above': [6]}, {'epoch': 1, 'low_water': 1, 'above': []}],
         'outstanding': [[0, 5], [0, 7], [1, 1], [1, 2]],
         'counters': {'issued': 14, 'reissued': 3, 'expired': 2, 'duplicates': 1, 'completed': 7}, 'next_lease_seq': 15}
state = {'update': 12, 'version': 12, 'optimizer_steps': 12, 'elapsed_seconds': 31.5, 'base_accuracy': 0.25,
         'evaluations': [0.25, 0.5], 'lease_state': lease}
put('checkpoint_readers_fuzz', 'trainer_state', b'\x00' + json.dumps(state, indent=2).encode())
inf = dict(lease, items_per_epoch=0, cursor=[0, 9], done=[{'epoch': 0, 'low_water': 4, 'above': [5, 8]}], outstanding=[[0, 4], [0, 6], [0, 7]])
put('checkpoint_readers_fuzz', 'trainer_state_infinite', b'\x00' + json.dumps(dict(state, lease_state=inf)).encode())
group = '''lease_id: "L7-0badcafe" epoch: 0 index: 5 actor_id: "actor-1" policy_version: 11
prompt_tokens: [1, 2, 3, 4] prompt_text: "What is 2+2?" reference: "4" task: "arith"
completions { tokens: [5, 6] logprobs: [-0.5, -1.25] stopped: true text: "4" reward: 1 } completions { tokens: [7] logprobs: [-2] text: "5" } verifier_id: "verifier-0" issued_at_version: 10 generate_seconds: 0.5'''
proto = subprocess.run(['protoc', '--proto_path=proto', '--encode=pmdrl.v1.Group', 'pmdrl.proto'], input=group.encode(), capture_output=True, check=True).stdout
pb = b''.join(struct.pack('<Q', len(proto)) + proto for _ in range(2))
put('checkpoint_readers_fuzz', 'buffered_groups', b'\x01' + pb)
put('checkpoint_readers_fuzz', 'buffered_groups_truncated', b'\x01' + pb[:-5])
put('checkpoint_readers_fuzz', 'manifest', b'\x02' + json.dumps({'update': 12, 'files': {'trainer_state.json': 300, 'buffered_groups.pb': 0}}, indent=2).encode())
