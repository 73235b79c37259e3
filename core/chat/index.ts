// Chat templates: validated OpenAI-style messages in, prompt token ids out (render.ts explains how
// control tokens are kept out of user text).
export {
  CHAT_ROLES,
  type ChatContentPart,
  type ChatFilePart,
  type ChatMessage,
  ChatMessageError,
  type ChatRole,
  type ChatTextPart,
  type ChatToolCall,
  joinText,
  normalizeMessages,
  parseChatMessages,
  type TemplateMessage,
} from "./messages.ts";
export { type RenderChatOptions, renderChat, renderChatText } from "./render.ts";
