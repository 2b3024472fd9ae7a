//! One Smithay Wayland compositor per desktop, inside the desktop's sandbox:
//! hosts the terminal, editor, browser and agent, renders through gpud, and
//! takes input from the control socket.
//!
//! Not built yet: this crate is reserved so the workspace has its final shape.
