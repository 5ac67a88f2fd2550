# The PAGI::Simple code of the announcement, verbatim, is
# examples/simple-01-hello/app.pl and runs on `pagi-server --app app.pl`:
# hello, a path parameter, a JSON body read without await, and a WebSocket
# route whose one-argument broadcast reaches the other clients only.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);
use PAGI::Test::CLI qw(ROOT start_cli stop_cli http_raw http_get_cli stderr_of);
use PAGI::Test::WebSocket qw(ws_connect OP_TEXT);

$SIG{PIPE} = 'IGNORE';

my $SNIPPET = <<'PERL';
use PAGI::Simple;
my $app = PAGI::Simple->new(name => 'My API');
$app->get('/' => sub ($c) { $c->text('Hello, World!') });
$app->get('/users/:id' => sub ($c) { my $id = $c->path_params->{id}; $c->json({ user_id => $id }) });
$app->post('/api/data' => sub ($c) { my $data = $c->json_body; $c->json({ received => $data, status => 'ok' }) });
$app->websocket('/chat' => sub ($ws) {
    $ws->on(message => sub ($data) { $ws->broadcast("Someone said: $data") });
});
$app->to_app;
PERL

my $file = ROOT() . '/examples/simple-01-hello/app.pl';
my $source = do { open my $fh, '<', $file or die "$file: $!"; local $/; <$fh> };
ok(index($source, $SNIPPET) >= 0, 'the example holds the announcement snippet verbatim');

my $child = start_cli([ '--app', 'examples/simple-01-hello/app.pl', '--quiet' ]);
ok($child->{ready}, 'pagi-server runs the snippet') or diag(stderr_of($child));

my $port = $child->{port};
my $res = http_get_cli($port, '/');
is($res && $res->{status}, 200, 'GET / is 200');
is($res && $res->{body}, 'Hello, World!', 'GET / says hello');
like($res && $res->{header}{'content-type'}, qr{^text/plain; charset=utf-8}, 'as text');

$res = http_get_cli($port, '/users/42');
is($res && $res->{status}, 200, 'GET /users/42 is 200');
is($res && $res->{body}, '{"user_id":"42"}', 'the path parameter comes back as JSON');

my $body = '{"name":"Ann","tags":["a","b"]}';
($res) = parse_responses(http_raw($port, "POST /api/data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    . "Content-Type: application/json\r\nContent-Length: " . length($body) . "\r\n\r\n$body"));
is($res && $res->{status}, 200, 'POST /api/data is 200');
is($res && $res->{body}, '{"received":{"name":"Ann","tags":["a","b"]},"status":"ok"}',
    'json_body works in a plain (non-async) handler');

($res) = parse_responses(http_raw($port, "POST /api/data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    . "Content-Type: application/json\r\nContent-Length: 6\r\n\r\n{\"a\":1"));
is($res && $res->{status}, 400, 'malformed JSON is a 400, not a 500');
like($res && $res->{body}, qr/^Bad Request: Malformed JSON in request body: /, 'with a clear message');

my ($alice) = ws_connect($port, path => '/chat')->get;
my ($bob)   = ws_connect($port, path => '/chat')->get;
my ($carol) = ws_connect($port, path => '/chat')->get;
# The route subscription happens right after accept; a round trip through
# each client proves all three are registered before Alice speaks.
for my $c ($bob, $carol, $alice) { $c->send_text('ready') }
$_->next_frames(2, 15)->get for $alice, $bob;    # each got two others' "ready"
$carol->next_frames(2, 15)->get;
$alice->send_text('hi');
my ($f) = $bob->next_frame(15)->get;
is($f->{opcode}, OP_TEXT, 'Bob gets a text frame');
is($f->{payload}, 'Someone said: hi', "Bob gets Alice's message");
($f) = $carol->next_frame(15)->get;
is($f->{payload}, 'Someone said: hi', 'so does Carol');
$bob->send_text('yo');
($f) = $alice->next_frame(15)->get;
is($f->{payload}, 'Someone said: yo', "Alice gets Bob's, not her own 'hi'");
is($alice->pending, 0, 'nothing else is waiting for Alice');

$_->send_close(1000, '') for $alice, $bob, $carol;
stop_cli($child);
is($child->{status} >> 8, 0, 'pagi-server exits cleanly');
done_testing;
