# PAGI::Simple hello: the announcement's code, exactly as written there.
# Run: perl -Mblib bin/pagi-server examples/simple-01-hello/app.pl --port 5000
# (installed: pagi-server --app examples/simple-01-hello/app.pl --port 5000)
#   curl http://127.0.0.1:5000/                 → Hello, World!
#   curl http://127.0.0.1:5000/users/42         → {"user_id":"42"}
#   curl -d '{"a":1}' -H 'Content-Type: application/json' http://127.0.0.1:5000/api/data
#                                               → {"received":{"a":1},"status":"ok"}
#   WebSocket ws://127.0.0.1:5000/chat: each message reaches the other clients as "Someone said: ..."
use PAGI::Simple;
my $app = PAGI::Simple->new(name => 'My API');
$app->get('/' => sub ($c) { $c->text('Hello, World!') });
$app->get('/users/:id' => sub ($c) { my $id = $c->path_params->{id}; $c->json({ user_id => $id }) });
$app->post('/api/data' => sub ($c) { my $data = $c->json_body; $c->json({ received => $data, status => 'ok' }) });
$app->websocket('/chat' => sub ($ws) {
    $ws->on(message => sub ($data) { $ws->broadcast("Someone said: $data") });
});
$app->to_app;
