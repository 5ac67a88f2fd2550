package PAGI::Simple::Static;
use strict;
use warnings;

use Carp ();
use Cwd ();
use Future::AsyncAwait;
use PAGI::App::Directory;
use PAGI::App::File;

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::Static - the files behind PAGI::Simple's C<static>

=head1 SYNOPSIS

    $app->static('/assets' => 'public');
    $app->static('/docs' => { root => 'share/docs', index => 'index.html', show_hidden => 0 });

=head1 DESCRIPTION

What L<PAGI::Simple/static> mounts: a directory served under a path prefix,
tried only when no route matched. The prefix is stripped from the path (and
added to C<root_path>), then L<PAGI::App::Directory> answers: files with
ETag, Last-Modified, Range and conditional GET, directories with a listing,
and nothing outside C<root> (see L<PAGI::App::File> for the path rules).

Options (a plain string is C<root>):

=over 4

=item root

The directory; required, and it must exist.

=item index

A file name served for a directory request (C</docs/> serves
C</docs/index.html> when it exists); default C<index.html>. C<undef> turns
it off, so directories are listed.

=item show_hidden

Serve names starting with a dot; default off (such paths are C<404>).

=back

=cut

sub new {
    my ($class, $prefix, $spec) = @_;
    my %o = ref $spec eq 'HASH' ? %$spec : (root => $spec);
    my $root = delete $o{root};
    Carp::croak("static $prefix: 'root' is required (the directory to serve)") unless defined $root && length $root;
    Carp::croak("static $prefix: '$root' is not a directory") unless -d $root;
    my $index = exists $o{index} ? delete $o{index} : 'index.html';
    my $show_hidden = delete $o{show_hidden} ? 1 : 0;
    Carp::croak("static $prefix: unknown option '" . (sort keys %o)[0] . "'") if %o;
    Carp::croak("static $prefix: 'index' must be a plain file name") if defined $index && $index =~ m{/|\A\.\.?\z};
    my $real = Cwd::realpath($root);
    return bless {
        prefix      => $prefix,
        root        => $real,
        index       => $index,
        show_hidden => $show_hidden,
        app         => PAGI::App::Directory->new(root => $real)->to_app,
    }, $class;
}

sub prefix { $_[0]{prefix} }

# The request's path below the prefix, or undef when it is not under it.
sub below {
    my ($self, $path) = @_;
    my $prefix = $self->{prefix};
    return '/' if $path eq $prefix && $prefix ne '/';
    return $path if $prefix eq '/';
    return substr($path, length $prefix) if substr($path, 0, length($prefix) + 1) eq "$prefix/";
    return undef;
}

# Serves $rest (the path below the prefix) through PAGI::App::Directory.
async sub serve {
    my ($self, $scope, $receive, $send, $rest) = @_;
    if (!$self->{show_hidden} && grep { /\A\./ && $_ ne '.' && $_ ne '..' } split m{/}, $rest) {
        return await _not_found($send);
    }
    my %inner = %$scope;
    my $root_path = $scope->{root_path} // '';
    $inner{root_path} = $self->{prefix} eq '/' ? $root_path : $root_path . $self->{prefix};
    $inner{path} = $inner{root_path} . $rest;
    # raw_path stays the request's own: the file app only checks it for escapes.
    my $bytes = $rest;
    utf8::encode($bytes) if utf8::is_utf8($bytes);
    if (defined $self->{index} && $rest =~ m{/\z} && -f $self->{root} . $bytes . $self->{index}) {
        $inner{path} .= $self->{index};
    }
    return await $self->{app}->(\%inner, $receive, $send);
}

async sub _not_found {
    my ($send) = @_;
    await $send->({ type => 'http.response.start', status => 404,
                    headers => [ [ 'content-type', 'text/plain; charset=utf-8' ] ] });
    await $send->({ type => 'http.response.body', body => "Not Found" });
}

1;
