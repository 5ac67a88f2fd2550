use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server wait_for);
use PAGI::Test::WebSocket qw(ws_connect build_frame OP_CONT OP_TEXT OP_BINARY OP_CLOSE OP_PING);
use Future::AsyncAwait;

# RFC 6455 enforcement (PAGI-SPEC 3.2.2, protocol enforcement table): each
# violation gets a Close frame with the listed code, then the connection
# closes, and the app's receive yields websocket.disconnect with that code
# and reason 'protocol_error'.

my @calls;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    my $call = { events => [] };
    push @calls, $call;
    await $receive->();
    await $send->({ type => 'websocket.accept' });
    while (1) {
        my $ev = await $receive->();
        push @{ $call->{events} }, $ev;
        if ($ev->{type} eq 'websocket.disconnect') { $call->{disconnect} = $ev; last }
    }
};
my ($server, $port) = start_server(app => $app);
my ($small, $small_port) = start_server(app => $app, max_ws_frame_size => 1024);

sub f { build_frame(@_) }

my @rows = (
    [ 'unmasked client frame'                     => 1002, f(opcode => OP_TEXT, payload => 'hi', mask => 0) ],
    [ 'RSV1 set'                                  => 1002, f(opcode => OP_TEXT, payload => 'hi', rsv1 => 1) ],
    [ 'RSV2 set'                                  => 1002, f(opcode => OP_TEXT, payload => 'hi', rsv2 => 1) ],
    [ 'RSV3 set'                                  => 1002, f(opcode => OP_TEXT, payload => 'hi', rsv3 => 1) ],
    (map { [ "reserved opcode $_" => 1002, f(opcode => $_, payload => 'x') ] } 3, 7, 11, 15),
    [ 'ping with a 126-byte payload'              => 1002, f(opcode => OP_PING, payload => 'p' x 126) ],
    [ 'fragmented ping'                           => 1002, f(opcode => OP_PING, payload => 'p', fin => 0) . f(opcode => OP_CONT, payload => 'q') ],
    [ 'continuation without a start'              => 1002, f(opcode => OP_CONT, payload => 'x') ],
    [ 'new data frame inside a fragmented message' => 1002, f(opcode => OP_TEXT, payload => 'a', fin => 0) . f(opcode => OP_TEXT, payload => 'b') ],
    [ 'close frame with a 1-byte payload'         => 1002, f(opcode => OP_CLOSE, payload => "\x03") ],
    (map { [ "close with invalid code $_" => 1002, f(opcode => OP_CLOSE, payload => pack('n', $_)) ] } 999, 1004, 1005, 1006, 1016, 2000, 5000),
    [ 'text with invalid UTF-8'                   => 1007, f(opcode => OP_TEXT, payload => "ok \xff\xfe") ],
    [ 'text with a UTF-16 surrogate'              => 1007, f(opcode => OP_TEXT, payload => "\xed\xa0\x80") ],
    [ 'invalid UTF-8 in the first fragment (checked per fragment, before the message ends)'
                                                  => 1007, f(opcode => OP_TEXT, payload => "abc\xc3\x28", fin => 0) ],
    [ 'close reason with invalid UTF-8'           => 1007, f(opcode => OP_CLOSE, payload => pack('n', 1000) . "\xff") ],
    [ 'a 2000-byte message over max_ws_frame_size 1024' => 1009, f(opcode => OP_BINARY, payload => 'z' x 2000), 'small' ],
    [ 'a fragmented 1800-byte message over max_ws_frame_size 1024' => 1009,
      join('', f(opcode => OP_BINARY, payload => 'z' x 600, fin => 0), f(opcode => OP_CONT, payload => 'z' x 600, fin => 0),
               f(opcode => OP_CONT, payload => 'z' x 600)), 'small' ],
);

for my $row (@rows) {
    my ($name, $code, $bytes, $which) = @$row;
    subtest "$name → $code" => sub {
        @calls = ();
        my ($c) = ws_connect($which ? $small_port : $port)->get;
        ok wait_for(sub { @calls }, 5), 'the app accepted';
        $c->send_raw($bytes);
        my $close = eval { $c->wait_close(5)->get };
        ok $close, 'the client gets a Close frame' or diag $@;
        is $close && $close->{code}, $code, "close code $code";
        ok eval { $c->wait_eof(5)->get }, 'then the connection closes' or diag $@;
        ok wait_for(sub { $calls[0]{disconnect} }, 5), 'the app got websocket.disconnect';
        is $calls[0]{disconnect}{code}, $code, "the app sees code $code";
        is $calls[0]{disconnect}{reason}, 'protocol_error', "the app sees reason 'protocol_error'";
        is scalar(grep { $_->{type} eq 'websocket.receive' } @{ $calls[0]{events} }), 0, 'no message reached the app';
        $c->close;
    };
}

subtest 'a message of exactly max_ws_frame_size is fine' => sub {
    @calls = ();
    my ($c) = ws_connect($small_port)->get;
    $c->send_binary('y' x 1024);
    $c->send_close(1000);
    my $close = $c->wait_close(5)->get;
    is $close->{code}, 1000, 'normal close';
    ok wait_for(sub { $calls[0]{disconnect} }, 5), 'disconnect';
    is length($calls[0]{events}[0]{bytes} // ''), 1024, 'the 1024-byte message reached the app';
    is $calls[0]{disconnect}{code}, 1000, 'code 1000';
};

stop_server($_) for $server, $small;
done_testing;
