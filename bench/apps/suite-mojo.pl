#!/usr/bin/env perl
# bench/run: the routes of apps/suite.pl in Mojolicious::Lite, same status,
# content type and body bytes (content types are set explicitly because
# Mojolicious would add "charset=UTF-8"). The SSE hub is the closed loop of
# apps/sse-fanout-mojo.pl. Uploads: Mojolicious collects the body itself
# (spooled to a temp file past 256 KiB) before the route runs; the route then
# reads it back in 64 KiB pieces to count it. Needs MOJO_MAX_MESSAGE_SIZE=0
# for the 1 GiB upload (bench/run sets it).
# Run: perl bench/apps/suite-mojo.pl daemon -m production -l http://127.0.0.1:PORT
use Mojolicious::Lite -signatures;
use Mojo::JSON qw(encode_json);

my $BLOB_64K = 'x' x 65536;
my $CHUNK    = 'd' x 65536;
my $DOWNLOAD = 1073741824;
my $BATCH    = $ENV{SSE_FANOUT_BATCH} || 50;
my $PAYLOAD  = 'x' x 64;

sub reply ($c, $type, $body) {
    $c->res->headers->content_type($type);
    $c->render(data => $body);
}

get '/'     => sub ($c) { reply($c, 'text/plain', "Hello, World!\n") };
get '/json' => sub ($c) { reply($c, 'application/json', encode_json({ message => 'Hello, World!' })) };
get '/64k'  => sub ($c) { reply($c, 'application/octet-stream', $BLOB_64K) };
post '/echo' => sub ($c) { reply($c, 'application/octet-stream', $c->req->body) };

post '/upload' => sub ($c) {
    my $asset = $c->req->content->asset;
    my ($count, $chunk) = (0);
    $count += length $chunk while length($chunk = $asset->get_chunk($count, 65536));
    reply($c, 'text/plain', $count);
};

# Streamed: the next 64 KiB piece is written when the previous one drained.
get '/download' => sub ($c) {
    $c->res->headers->content_type('application/octet-stream');
    my $size = $c->param('bytes') // $DOWNLOAD;    # ?bytes=N shortens it, for --quick
    $c->res->headers->content_length($size);
    my $left = $size / length $CHUNK;
    my $more;
    $more = sub ($c, @) {
        return undef $more if $left-- <= 0;    # Content-Length reached: done
        $c->write($CHUNK, $more);
    };
    $c->inactivity_timeout(300);
    $more->($c);
};

websocket '/ws' => sub ($c) {
    $c->inactivity_timeout(300);
    # text/binary give the raw frame payload: it goes back as the same kind.
    $c->on(text   => sub ($c, $bytes) { $c->send({ text   => $bytes }) });
    $c->on(binary => sub ($c, $bytes) { $c->send({ binary => $bytes }) });
};

# --- SSE hub: the closed loop of apps/sse-fanout-mojo.pl ----------------------
my %subscribers;
my $next_key    = 0;
my $seq         = 0;
my $outstanding = 0;
my $publish_queued = 0;

sub publish_batch {
    return if $outstanding || !%subscribers;
    my @events = map { "event: tick\ndata: $PAYLOAD\nid: $_\n\n" } $seq + 1 .. $seq + $BATCH;
    $seq += $BATCH;
    for my $sub (values %subscribers) {
        $sub->{owed}++;
        $outstanding++;
        my $c = $sub->{c};
        $c->write($_) for @events[ 0 .. $#events - 1 ];
        $c->write($events[-1], sub { settle($sub, 1) unless $sub->{gone} });
    }
}

sub settle ($sub, $n) {
    $sub->{owed}  -= $n;
    $outstanding -= $n;
    schedule_publish() if $outstanding == 0;
}

# Batches start from the loop, one queued at most, as in suite.pl.
sub schedule_publish {
    return if $publish_queued;
    $publish_queued = 1;
    Mojo::IOLoop->next_tick(sub { $publish_queued = 0; publish_batch() });
}

get '/sse' => sub ($c) {
    $c->inactivity_timeout(300);
    $c->res->headers->content_type('text/event-stream');
    $c->res->headers->cache_control('no-cache');
    my $key = ++$next_key;
    my $sub = $subscribers{$key} = { c => $c, owed => 0 };
    $c->on(finish => sub {
        delete $subscribers{$key};
        $sub->{gone} = 1;
        settle($sub, $sub->{owed}) if $sub->{owed};
    });
    $c->write;
    schedule_publish();
};

app->start;
