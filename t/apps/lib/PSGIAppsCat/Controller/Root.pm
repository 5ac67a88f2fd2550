package PSGIAppsCat::Controller::Root;
# The actions of PSGIAppsCat: a greeting, path and query arguments, a form,
# an upload through $c->req->upload, a session counter and a response
# streamed with $c->res->write and the writer of $c->res->write_fh.
use Moose;
use namespace::autoclean;
use Digest::SHA ();
use Time::HiRes ();
use PSGIAppsLater qw(later);

BEGIN { extends 'Catalyst::Controller' }

__PACKAGE__->config(namespace => '');

sub text {
    my ($c, $body, $status) = @_;
    $c->res->status($status // 200);
    $c->res->content_type('text/plain; charset=utf-8');
    $c->res->body($body);
}

sub index :Path :Args(0) {
    my ($self, $c) = @_;
    text($c, "Hello from Catalyst\n");
}

sub hello :Local :Args(1) {
    my ($self, $c, $name) = @_;
    text($c, "Hello, $name (greeting: " . ($c->req->query_parameters->{greeting} // '-') . ")\n");
}

sub form :Local :Args(0) {
    my ($self, $c) = @_;
    return text($c, "POST only\n", 405) unless $c->req->method eq 'POST';
    my $p = $c->req->body_parameters;
    my @colours = ref $p->{colour} ? @{ $p->{colour} } : ($p->{colour} // ());
    text($c, "name=$p->{name}\ncolours=" . join(',', @colours) . "\n");
}

sub upload :Local :Args(0) {
    my ($self, $c) = @_;
    my $upload = $c->req->upload('file') or return text($c, "no file field\n", 400);
    text($c, 'title=' . $c->req->body_parameters->{title} . "\nfilename=" . $upload->filename
        . "\ncontent-type=" . $upload->type . "\nsize=" . $upload->size
        . "\nsha1=" . Digest::SHA::sha1_hex($upload->slurp) . "\n");
}

sub counter :Local :Args(0) {
    my ($self, $c) = @_;
    my $count = ++$c->session->{count};
    text($c, "count=$count\n");
}

# write sends the headers and a first piece; the writer from write_fh ends
# the response later, after Catalyst has finished with the request.
sub stream :Local :Args(0) {
    my ($self, $c) = @_;
    $c->res->content_type('text/plain');
    $c->res->write(sprintf "first at %.6f\n", Time::HiRes::time);
    my $writer = $c->res->write_fh;
    my $env = $c->req->env;
    later($env, 0.6, sub {
        $writer->write(sprintf "second at %.6f\n", Time::HiRes::time);
        later($env, 0.3, sub {
            $writer->write("done\n");
            $writer->close;
        });
    });
}

sub default :Path {
    my ($self, $c) = @_;
    text($c, 'no action for ' . $c->req->path . "\n", 404);
}

__PACKAGE__->meta->make_immutable;

1;
