// The official openai npm package against lokal: node check.mjs BASE_URL
// Prints one JSON object with what each call gave; tests/clients/test_node_sdk.py checks it.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "sk-unused", maxRetries: 0, timeout: 120_000 });
const out = { resolved: import.meta.resolve("openai"), node: process.version };
const messages = [{ role: "user", content: "Say hello in three words." }];

out.models = (await client.models.list()).data.map((m) => m.id).sort();

const stream = await client.chat.completions.create({
  model: "gpt-3.5-turbo", messages, max_tokens: 16, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
out.stream = { pieces: [], finish: null, usage: null, objects: new Set() };
for await (const chunk of stream) {
  out.stream.objects.add(chunk.object);
  const choice = chunk.choices[0];
  if (choice?.delta?.content) out.stream.pieces.push(choice.delta.content);
  if (choice?.finish_reason) out.stream.finish = choice.finish_reason;
  if (chunk.usage) out.stream.usage = chunk.usage;
}
out.stream.objects = [...out.stream.objects];
const whole = await client.chat.completions.create({ model: "gpt-3.5-turbo", messages, max_tokens: 16, temperature: 0 });
out.chat = whole.choices[0].message.content;

// No encoding_format: the SDK asks for base64 and decodes it into floats.
const texts = ["The council kept the property tax.", "Geese on the cricket field."];
const { data: raw, response } = await client.embeddings.create({ model: "text-embedding-ada-002", input: texts })
  .withResponse();
out.defaultEmbeddings = raw.data.map((d) => ({ index: d.index, isArray: Array.isArray(d.embedding), values: d.embedding }));
out.embeddingsContentType = response.headers.get("content-type");
const floats = await client.embeddings.create({ model: "text-embedding-ada-002", input: texts, encoding_format: "float" });
out.floatEmbeddings = floats.data.map((d) => d.embedding);

try {
  await client.chat.completions.create({ model: "gpt-4o", messages });
  out.notFound = null;
} catch (error) {
  out.notFound = { isNotFound: error instanceof OpenAI.NotFoundError, status: error.status, param: error.param };
}

console.log(JSON.stringify(out));
